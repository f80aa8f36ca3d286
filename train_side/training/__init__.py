"""Training side networks from a feature store: one run or a sweep (``train``, ``sweep``), their
output directories (``rundir``) and loss plots (``plots``). Imports ``network`` and the neutral
modules (``config``, ``checkpoint``, ``data``, ``devices``), never ``inference``."""
