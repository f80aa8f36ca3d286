"""A tiny feature store in which something is learnable, written without any backbone.

Hidden states carry each token's identity (a fixed random embedding per token, plus per-layer
noise), and every sequence counts upward: the next token is (token + 1) mod V. A side network
that reads h_0 can learn to predict it through the frozen head.
"""

from __future__ import annotations

import numpy as np

from featurestore import StoreSpec, StoreWriter, TokenTable

V, D, L, FF = 40, 32, 4, 64  # vocabulary, width, backbone blocks, backbone MLP width


def write_tiny_store(path, n_examples: int = 48, layers=tuple(range(L + 1)), codec: str = "fp32", seed: int = 0,
                     vocab: int = V, width: int = D, chunk_mb: float = 0.01):
    """The store at ``path``; ``vocab`` and ``width`` larger than the defaults make each training step
    cost more (scripts/bench_tune.py), the head's logits above all. Its chunks are tiny by default,
    so that a tiny store still has many."""
    V, D = vocab, width  # noqa: N806 - the module's names, for this store
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((V, D)).astype(np.float32)
    ids, masks = [], []
    for _ in range(n_examples):
        n = int(rng.integers(6, 20))
        ids.append((int(rng.integers(0, V)) + np.arange(n)) % V)
        masks.append(np.r_[np.zeros(n // 3, np.uint8), np.ones(n - n // 3, np.uint8)])
    order = np.argsort([len(i) for i in ids], kind="stable")  # stores are sorted by length
    tokens = TokenTable.from_examples([ids[i] for i in order], [masks[i] for i in order])
    model = {"id": "tiny", "n_layers": L, "hidden_size": D, "intermediate_size": FF * D // 32, "vocab_size": V,
             "weights_hash": "tiny", "dtype": "float32", "quantization": "none", "architecture": "Tiny"}
    spec = StoreSpec(layers, D, codec, {"model": model, "dataset": {"dataset": "counting", "split": "train"}})
    head = {"lm_head.weight": rng.standard_normal((V, D)).astype(np.float32), "norm.weight": np.ones(D, np.float32)}
    with StoreWriter(path, spec, tokens, meta=[{"id": int(i)} for i in order], head=head,
                     head_config={"logit_softcap": None}, chunk_mb=chunk_mb) as writer:
        hidden = {k: embedding[tokens.input_ids] + 0.1 * (k + 1) * rng.standard_normal((tokens.n_tokens, D)).astype(np.float32)
                  for k in layers}
        writer.write(0, hidden)
    return path
