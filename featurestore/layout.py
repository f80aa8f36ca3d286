"""The on-disk layout of a feature store, format version 1.

One Zarr v3 group per store, token-major and ragged (no padding stored)::

    attrs                  format_version, fingerprint, complete (set last), spec, stats, ...
    examples/offsets       int64 (n_examples + 1): example i = tokens[offsets[i]:offsets[i+1]]
    examples/meta          str (n_examples): one JSON object per example (answers, labels, ids)
    tokens/input_ids       int32 (n_tokens)
    tokens/loss_mask       uint8 (n_tokens): 1 on target tokens
    layers/<k>/<part>      hidden-state index k encoded by the codec into named parts
    head/<name>            frozen final norm + LM head weights (attrs: their config)
    blocks/<name>          optional: the backbone's top blocks, for a side network that starts as them
    manifest/layout        group whose attrs hold checksums of tokens/, examples/, head/, blocks/ (at creation)
    manifest/shard-<j>     group whose attrs hold checksums + stats of shard j of every layer array

Every token-major array shares one shard grid: shard j holds tokens [j*S, (j+1)*S). A shard is the
unit of writing, resuming, distributing and verifying; it is done once its manifest exists.
Manifests are empty Zarr groups (one atomic object each), so the store stays a pure Zarr hierarchy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .codecs import Codec, get_codec
from .fingerprint import fingerprint

FORMAT_VERSION = 1

OFFSETS = "examples/offsets"
META = "examples/meta"
INPUT_IDS = "tokens/input_ids"
LOSS_MASK = "tokens/loss_mask"
HEAD = "head"
BLOCKS = "blocks"
LAYOUT_MANIFEST = "manifest/layout"
# The root attributes the writer owns; a producer's ``source`` (its provenance) sits beside them
# and may not reuse a name, or it would overwrite `complete` or the fingerprint.
WRITER_ATTRS = frozenset({
    "format", "format_version", "fingerprint", "complete", "completed", "created", "tool_version", "layers",
    "hidden_size", "codec", "tokens_digest", "n_examples", "n_tokens", "chunk_tokens", "shard_tokens", "stats",
})


def layer_path(layer: int, part: str) -> str:
    return f"layers/{layer}/{part}"


def shard_manifest(shard: int) -> str:
    return f"manifest/shard-{shard:06d}"


@dataclass(frozen=True)
class TokenTable:
    """The ragged token layout shared by every array of a store."""

    offsets: np.ndarray  # int64 (n_examples + 1)
    input_ids: np.ndarray  # int32 (n_tokens)
    loss_mask: np.ndarray  # uint8 (n_tokens)

    @classmethod
    def from_examples(cls, input_ids: list, loss_masks: list) -> TokenTable:
        lengths = [len(ids) for ids in input_ids]
        if any(len(m) != n for m, n in zip(loss_masks, lengths, strict=True)):
            raise ValueError("every loss mask must have its example's length")
        if any(n == 0 for n in lengths):
            raise ValueError("examples must have at least one token")
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        cat = lambda xs, dt: np.concatenate([np.asarray(x, dtype=dt) for x in xs]) if xs else np.zeros(0, dt)
        return cls(offsets, cat(input_ids, np.int32), cat(loss_masks, np.uint8))

    @property
    def n_examples(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @cached_property
    def digest(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for a in (self.offsets.astype("<i8"), self.input_ids.astype("<i4"), self.loss_mask.astype("u1")):
            h.update(a.tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Geometry:
    """Chunk and shard sizes along the token axis."""

    n_tokens: int
    chunk_tokens: int
    shard_tokens: int

    @classmethod
    def plan(cls, n_tokens: int, row_bytes: int, chunk_mb: float = 4.0, chunks_per_shard: int = 2) -> Geometry:
        """Chunks of about ``chunk_mb`` for the widest array (a power of two of tokens: large
        enough that Zarr's per-chunk overhead stays small in sequential reads), shards of
        ``chunks_per_shard`` chunks: few objects for object stores, bounded writer memory, and a
        short last write after the final forward pass."""
        chunk = 1 << max(4, int(np.log2(max(1.0, chunk_mb * 2**20 / row_bytes))))
        return cls(n_tokens, chunk, chunk * chunks_per_shard)

    @property
    def n_shards(self) -> int:
        return -(-self.n_tokens // self.shard_tokens)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_tokens
        return start, min(start + self.shard_tokens, self.n_tokens)

    def shard_of(self, token: int) -> int:
        return token // self.shard_tokens


@dataclass(frozen=True)
class StoreSpec:
    """Everything that determines a store's content, and so its fingerprint.

    ``source`` is the producer's description (model, tokenizer, dataset, template, max_length...):
    opaque to the feature store, but hashed.
    """

    layers: tuple[int, ...]
    hidden_size: int
    codec: Codec
    source: dict

    def __init__(self, layers, hidden_size: int, codec: str | dict | Codec, source: dict | None = None):
        layers = tuple(sorted({int(k) for k in layers}))
        if not layers:
            raise ValueError("a store needs at least one layer")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "hidden_size", int(hidden_size))
        object.__setattr__(self, "codec", get_codec(codec))
        clash = sorted(WRITER_ATTRS & set(source or {}))
        if clash:
            raise ValueError(f"source keys {clash} are the store's own attributes; rename them")
        object.__setattr__(self, "source", dict(source or {}))

    def content(self, tokens: TokenTable) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "layers": list(self.layers),
            "hidden_size": self.hidden_size,
            "codec": self.codec.spec,
            "source": self.source,
            "tokens": tokens.digest,
        }

    def fingerprint(self, tokens: TokenTable) -> str:
        return fingerprint(self.content(tokens))

    def row_bytes(self) -> int:
        """Bytes per token of the widest stored part (sizes chunks)."""
        parts = self.codec.parts().values()
        return max(int(np.prod(p.row_shape(self.hidden_size))) * np.dtype(p.dtype).itemsize for p in parts)


def plan_batches(lengths, token_budget: int) -> list[tuple[int, int]]:
    """Runs of consecutive examples [first, last) whose padded size (count x longest) fits
    ``token_budget``; an example longer than the budget gets a batch of its own. On a store
    sorted by length this batches with little padding and reads sequentially."""
    batches, first, longest = [], 0, 0
    for i, n in enumerate(lengths):
        longest_if_added = max(longest, int(n))
        if i > first and longest_if_added * (i - first + 1) > token_budget:
            batches.append((first, i))
            first, longest_if_added = i, int(n)
        longest = longest_if_added
    batches.append((first, len(lengths)))
    return batches
