"""A store's provenance: which backbone, tokenizer, data and template computed its hidden states.

``extract`` writes it into the store's root attributes (and hashes it into the fingerprint);
``train_side`` reads it back to size side networks, and evaluation to reload exactly the same
backbone, data and template. One typed record, so neither side spells the other's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from featurestore import StoreError

from .tasks.datasets import load_examples
from .tasks.examples import Example

VERSION = 1  # bump with a reader for the old layout when a field changes meaning
VERSION_ATTR = "provenance_version"  # kept outside the fingerprint, so adding it changed no store
SIZES = ("n_layers", "hidden_size", "intermediate_size")  # what a side network is built from


@dataclass(frozen=True)
class Part:
    """A part of the provenance: typed fields (None: not recorded) and ``extra``, the rest of its
    JSON as recorded (other keys, and keys recorded as null). ``to_json`` gives back exactly the
    JSON it was read from, so a store's fingerprint never depends on which version read it."""

    extra: dict = field(default_factory=dict, kw_only=True)

    @classmethod
    def from_json(cls, recorded: Mapping | None):
        names = {f.name for f in fields(cls)} - {"extra"}
        recorded = dict(recorded or {})
        return cls(**{k: v for k, v in recorded.items() if k in names and v is not None},
                   extra={k: v for k, v in recorded.items() if k not in names or v is None})

    def to_json(self) -> dict:
        typed = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {k: v for k, v in typed.items() if v is not None} | self.extra


@dataclass(frozen=True)
class BackboneInfo(Part):
    """Which backbone computed the hidden states (extract.backbones' ``info``): its identity
    (weights, quantization, dtype, architecture), where to load it from, and its sizes."""

    id: str | None = None  # a packaged alias, a local directory or a hub id
    architecture: str | None = None
    model_type: str | None = None
    weights_hash: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    n_layers: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    num_attention_heads: int | None = None
    max_position_embeddings: int | None = None

    @property
    def sizes(self) -> dict:
        """The backbone sizes a side network is built from: blocks, width and MLP width."""
        missing = [k for k in SIZES if getattr(self, k) is None]
        if missing:
            raise StoreError(f"the store does not describe its backbone's {', '.join(missing)}; re-extract it")
        return {k: getattr(self, k) for k in SIZES}


@dataclass(frozen=True)
class DatasetRef(Part):
    """Which examples the store holds (``load_examples``' description of them): enough to load
    them, or another split of the same data, again."""

    dataset: str | None = None  # "arith", a local file or a hub id
    split: str | None = None
    config: str | None = None  # a hub dataset's
    seed: int | None = None  # arith's
    question_field: str | None = None  # None: load_examples' default
    answer_field: str | None = None
    limit: int | None = None
    n_examples: int | None = None
    sha256: str | None = None
    labels: list[str] | None = None  # a classification task's label words; None: answers are generated text

    def load(self, split: str, limit: int | None = None) -> list[Example]:
        """The first ``limit`` examples of ``split`` of this dataset, read as extract read the
        store's (the same question and answer fields, config and seed)."""
        if self.dataset is None:
            raise StoreError("the store does not say which dataset it holds; pass one")
        recorded = {k: getattr(self, k) for k in ("question_field", "answer_field", "config", "seed")}
        return load_examples(self.dataset, split, limit=limit, **{k: v for k, v in recorded.items() if v is not None})[0]


@dataclass(frozen=True)
class Template(Part):
    """The prompt template the examples were put in (extract.tasks.prompts' ``template_info``);
    a store that records none used the plain one."""

    name: str = "plain"  # "plain" or "chat"
    prompt: str | None = None  # the plain template's text
    answer: str | None = None
    eos_token_id: int | None = None  # the plain template's end of answer
    chat_template_sha256: str | None = None

    def eos_token_ids(self, tokenizer) -> set[int]:
        """The tokens that end an answer: the tokenizer's EOS and the template's own."""
        return {tokenizer.eos_token_id, self.eos_token_id} - {None}


@dataclass(frozen=True)
class Provenance:
    """What computed a store's hidden states. Each part may be given as its JSON (a dict), as a
    store's attributes hold it."""

    model: BackboneInfo
    dataset: DatasetRef
    tokenizer: dict | None = None  # class and pad_token_id
    template: Template = field(default_factory=Template)
    max_length: int | None = None
    long_examples: str | None = None  # "truncate" | "skip"
    token_budget: int | None = None  # padded tokens per forward batch: batch composition changes float results
    top_blocks: int | None = None  # how many of the backbone's top blocks the store holds (None: none)

    def __post_init__(self):
        for name, part in (("model", BackboneInfo), ("dataset", DatasetRef), ("template", Template)):
            if not isinstance(getattr(self, name), part):
                object.__setattr__(self, name, part.from_json(getattr(self, name)))

    def source(self) -> dict:
        """The JSON-able dict the store writer hashes and stores (unset fields left out)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v.to_json() if isinstance(v, Part) else v for k, v in values.items() if v is not None}

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
        return cls(**{f.name: attrs.get(f.name) for f in fields(cls)})

    @property
    def backbone_sizes(self) -> dict:
        """The backbone sizes a side network is built from: blocks, width and MLP width."""
        return self.model.sizes
