"""Using a trained side network with its reloaded backbone: generation (``generate``),
evaluation (``evaluate``), the store's head check (``check``), ``SideModel`` and runs on the Hub
(``side_model``, ``hub``), the backbone reloaded exactly (``backbone``). Imports ``network`` and
the neutral modules (``config``, ``checkpoint``, ``data``, ``devices``), never ``training``."""
