"""Synthetic stores that look like real LLM residual streams (shared by tests and their subprocesses)."""

from __future__ import annotations

import numpy as np

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
