"""The feature store: a frozen LLM's hidden states on disk, shareable, verifiable.

numpy + zarr only (no torch), so anyone can read a store. See ``layout`` for the format.
"""

from . import catalog
from .codecs import CODECS, DEFAULT_LOSSY, Codec, CodecError, get_codec
from .errors import CorruptStoreError, MissingLayerError, StoreError, UserError
from .layout import FORMAT_VERSION, Geometry, StoreSpec, TokenTable
from .reader import FeatureStore, Tokens
from .verify import Problem, verify
from .writer import BackgroundWriter, StoreWriter, finalize

__all__ = [
    "catalog", "CODECS", "DEFAULT_LOSSY", "FORMAT_VERSION", "BackgroundWriter", "Codec", "CodecError", "FeatureStore",
    "Geometry", "Problem", "StoreError", "StoreSpec", "StoreWriter", "TokenTable", "Tokens", "finalize",
    "get_codec", "verify", "CorruptStoreError", "MissingLayerError", "UserError",
]
