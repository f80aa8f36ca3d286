"""Synthetic stores that look like real LLM residual streams (shared by tests and their subprocesses)."""

from __future__ import annotations

import numpy as np
import zarr
from zarr.storage import WrapperStore

from featurestore import StoreSpec, TokenTable

HIDDEN = 48
LAYERS = (0, 1, 3)


def residual_stream(n_tokens: int, first_tokens: np.ndarray, layer: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows with uneven channel scales, two outlier channels present in every token, and
    a massive activation (~2e4) on the first token of every example, like real LLMs show."""
    rng = np.random.default_rng([seed, layer])
    x = rng.standard_normal((n_tokens, HIDDEN)) * rng.lognormal(0, 0.5, HIDDEN)
    x[:, 5] += 60 * (layer + 1)
    x[:, 11] -= 25
    x[first_tokens, 3] = 2e4
    return x.astype(np.float32)


def token_table(n_examples: int = 60, seed: int = 0) -> TokenTable:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 90, n_examples)
    ids = [rng.integers(0, 500, n) for n in lengths]
    masks = [rng.random(n) < 0.4 for n in lengths]
    return TokenTable.from_examples(ids, masks)


def states(tokens: TokenTable, layers=LAYERS, seed: int = 0) -> dict[int, np.ndarray]:
    return {k: residual_stream(tokens.n_tokens, tokens.offsets[:-1], k, seed) for k in layers}


def spec(codec: str = "int8o", layers=LAYERS) -> StoreSpec:
    return StoreSpec(layers, HIDDEN, codec, source={"model": {"id": "synthetic"}, "dataset": {"name": "synth"}})


def write_store(path, tokens: TokenTable, codec: str = "int8o", batch: int = 97, chunk_mb: float = 0.004, **kw):
    """Writes a whole store in batches of ``batch`` tokens (small chunks: many shards)."""
    from featurestore import StoreWriter

    data = states(tokens)
    meta = [{"id": i, "final": str(i * 7)} for i in range(tokens.n_examples)]
    with StoreWriter(path, spec(codec), tokens, meta=meta, head=head(), chunk_mb=chunk_mb, **kw) as w:
        for start in range(0, tokens.n_tokens, batch):
            w.write(start, {k: v[start : start + batch] for k, v in data.items()})
    return data


def head() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"lm_head.weight": rng.standard_normal((30, HIDDEN)).astype(np.float32), "norm.weight": np.ones(HIDDEN, np.float32)}


def arrays(path) -> dict[str, np.ndarray]:
    """Every array of a store by path, for exact comparisons."""
    group = zarr.open_group(str(path), mode="r")
    return {name: a[...] for name, a in group.arrays()} | {
        f"{g}/{name}": a[...] for g, sub in group.groups() for name, a in _walk(sub)
    }


def _walk(group, prefix=""):
    for name, a in group.arrays():
        yield prefix + name, a
    for name, sub in group.groups():
        yield from _walk(sub, f"{prefix}{name}/")


class RecordingStore(WrapperStore):
    """Remembers every key read through it."""

    def __init__(self, store):
        super().__init__(store)
        self.keys: set[str] = set()

    async def get(self, key, prototype, byte_range=None):
        self.keys.add(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        self.keys.update(k for k, _ in key_ranges)
        return await self._store.get_partial_values(prototype, key_ranges)
