"""What a store's frozen head means: how its arrays turn the final hidden state h_L into logits.

    logits = softcap(logit_scale * (lm_head.weight @ (projection.weight @ h_L) + lm_head.bias))

Arrays (float32): "lm_head.weight" (V, d'), optional "lm_head.bias" (V,) and "projection.weight"
(d', d) (OPT-350m projects its final state down: d' < d; without it d' = d). The config (the head
group's attributes) holds "logit_scale" (Cohere, Granite, Falcon-H1; absent: 1) and "logit_softcap"
(Gemma 2/3; None: none), plus a description of the final norm that produced h_L ("norm": type, eps,
weight offset, affine; None when the model has none) with its arrays "norm.weight" / "norm.bias"
when it has them. The norm is for reference only: h_L is stored after it.

Written by ``extract`` (which checks on its first batch that these logits are the model's own),
read by training and evaluation; numpy only, so a reader without torch can compute logits too.
Stores written before "logit_scale" and "projection.weight" existed lack both and mean the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def logits(h: np.ndarray, weights: Mapping[str, np.ndarray], config: Mapping) -> np.ndarray:
    """Logits (..., V) of final hidden states h (..., d), in float32."""
    h = np.asarray(h, dtype=np.float32)
    if "projection.weight" in weights:
        h = h @ weights["projection.weight"].T
    out = h @ weights["lm_head.weight"].T
    if "lm_head.bias" in weights:
        out = out + weights["lm_head.bias"]
    scale, softcap = logit_scale(config), config.get("logit_softcap")
    if scale != 1.0:
        out = out * np.float32(scale)
    if softcap is not None:
        out = np.float32(softcap) * np.tanh(out / np.float32(softcap))
    return out.astype(np.float32, copy=False)


def fold(weights: Mapping[str, np.ndarray], config: Mapping) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """The head as one linear map and a softcap: (weight (V, d), bias (V,) or None, softcap or None)
    with logits = softcap(h @ weight.T + bias). The projection and the logit scale are folded into
    the weight, so that training's fused loss sees a plain (V, d) matrix."""
    weight = np.asarray(weights["lm_head.weight"], dtype=np.float32)
    bias = weights.get("lm_head.bias")
    if "projection.weight" in weights:
        weight = weight @ np.asarray(weights["projection.weight"], dtype=np.float32)  # (V, d') @ (d', d)
    scale = logit_scale(config)
    if scale != 1.0:
        weight = weight * np.float32(scale)
        bias = None if bias is None else bias * np.float32(scale)
    return weight, None if bias is None else np.asarray(bias, dtype=np.float32), config.get("logit_softcap")


def logit_scale(config: Mapping) -> float:
    return float(config.get("logit_scale", 1.0))

