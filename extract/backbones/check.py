"""The head check: the logits that a store's head computes from its final state must be the model's
own. Whatever a family does between h_L and its logits (a multiplier under a new name, a learned
scale, a projection), a head that misses it gives other logits, and this check refuses it.

``extract`` runs it on its first batch before the store is created; ``train_side check`` repeats
it on an existing store with the reloaded backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featurestore import Codec
from featurestore import head as stored_head

from ..errors import BackboneError
from .loading import Backbone

CHECK_ROWS, CHECK_TOKENS = 4, 16  # a few tokens of a few examples: enough to see any head's error


class HeadMismatchError(BackboneError):
    """The stored head does not reproduce the model's logits: the family is not supported."""


@dataclass(frozen=True)
class HeadCheck:
    difference: float  # max |head(stored h_L) - model logits|
    allowed: float  # the tolerance: the dtype's, plus what the codec's round trip moves the logits
    largest: float  # max |model logits|, for scale

    @property
    def ok(self) -> bool:
        return self.difference <= self.allowed


def relative_tolerance(dtype: str, quantization: str) -> float:
    """How far the head's float32 logits may be from the model's, relative to the largest logit:
    float32 matmuls agree to ~1e-6; a quantised model computes in its compute dtype; bfloat16 and
    float16 round the final state and the logits to 8 and 11 bits."""
    if dtype != "float32":
        return 3e-2
    return 1e-4 if quantization == "none" else 1e-2


def compare_head(backbone: Backbone, weights: dict[str, np.ndarray], config: dict, codec: Codec,
                 input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 stored_final: np.ndarray | None = None) -> HeadCheck:
    """Runs the causal LM on a batch (B, T) and compares its logits at every real token with the
    head's logits of the final state as the store holds it: ``stored_final`` (tokens, d) read from a
    store, or else the live h_L through the codec's round trip."""
    model_logits, final = backbone.logits(input_ids, attention_mask)
    real = attention_mask.to(model_logits.device).bool()
    theirs = model_logits[real].float().cpu().numpy()  # (tokens, V)
    live = final[real].float().cpu().numpy()  # (tokens, d)
    stored = codec.roundtrip(live) if stored_final is None else stored_final
    ours = stored_head.logits(stored, weights, config)
    moved = float(np.abs(ours - stored_head.logits(live, weights, config)).max())  # the codec's share
    largest = float(np.abs(theirs).max())
    allowed = relative_tolerance(backbone.info["dtype"], backbone.info["quantization"]) * largest + moved
    return HeadCheck(float(np.abs(ours - theirs).max()), allowed, largest)


def check_head(backbone: Backbone, weights: dict[str, np.ndarray], config: dict, codec: Codec,
               input_ids: torch.Tensor, attention_mask: torch.Tensor,
               stored_final: np.ndarray | None = None) -> HeadCheck:
    """:func:`compare_head`, raising a HeadMismatchError that names the family and the largest
    difference when the head is wrong. Give it a few examples (CHECK_ROWS of CHECK_TOKENS tokens):
    (B, T, V) logits of a whole batch would dwarf the batch."""
    result = compare_head(backbone, weights, config, codec, input_ids, attention_mask, stored_final)
    if not result.ok:
        family, architecture = backbone.family, backbone.info["architecture"]
        raise HeadMismatchError(
            f"the stored head of {family.name} ({architecture}) does not give the model's own logits: "
            f"largest difference {result.difference:.4g} (allowed {result.allowed:.2g}, largest logit "
            f"{result.largest:.4g}); this family is not supported (see the README's table of families)")
    return result
