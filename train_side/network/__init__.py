"""The side network itself: Ladder / xLadder with the frozen head (``model``), the batches it reads
and their still-encoded hidden states (``batch``, ``encoded``), its loss (``loss``) and its
initialisation from the backbone (``prune``). Imports nothing else of ``train_side``."""
