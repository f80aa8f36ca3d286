"""A store's provenance: which backbone, tokenizer, data and template computed its hidden states.

``extract`` writes it into the store's root attributes (and hashes it into the fingerprint);
``train_side`` reads it back to size side networks, and evaluation to reload exactly the same
backbone, data and template. One typed record, so neither side spells the other's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from featurestore import StoreError

VERSION = 1  # bump with a reader for the old layout when a field changes meaning
VERSION_ATTR = "provenance_version"  # kept outside the fingerprint, so adding it changed no store


@dataclass(frozen=True)
class Provenance:
    model: dict  # the backbone's info: id, architecture, weights_hash, dtype, quantization, sizes
    dataset: dict  # dataset, split, seed or fields, n_examples, sha256 of the examples
    tokenizer: dict | None = None  # class and pad_token_id
    template: dict | None = None  # name, and what makes it reproducible (prompt text or chat template hash)
    max_length: int | None = None
    long_examples: str | None = None  # "truncate" | "skip"
    token_budget: int | None = None  # padded tokens per forward batch: batch composition changes float results

    def source(self) -> dict:
        """The JSON-able dict the store writer hashes and stores (unset fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @staticmethod
    def version_attrs() -> dict:
        """Written beside the provenance, outside the fingerprint (so adding it changed no store)."""
        return {VERSION_ATTR: VERSION}

    @classmethod
    def load(cls, attrs: Mapping) -> Provenance:
        """The provenance recorded in a store's (or a checkpoint's) attributes."""
        version = attrs.get(VERSION_ATTR, 1)
        if version != VERSION:
            raise StoreError(f"provenance version {version} is not {VERSION}; upgrade ladder-cache to read this store")
        if not isinstance(attrs.get("model"), Mapping):
            raise StoreError("the store does not say which backbone computed it; re-extract it with `extract`")
        return cls(**{f.name: attrs.get(f.name) for f in fields(cls)} | {"dataset": attrs.get("dataset") or {}})

    @property
    def backbone_sizes(self) -> dict:
        """The backbone sizes a side network is built from: blocks, width and MLP width."""
        missing = [k for k in ("n_layers", "hidden_size", "intermediate_size") if k not in self.model]
        if missing:
            raise StoreError(f"the store does not describe its backbone's {', '.join(missing)}; re-extract it")
        return {k: self.model[k] for k in ("n_layers", "hidden_size", "intermediate_size")}
