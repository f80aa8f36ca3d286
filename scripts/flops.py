"""Training compute, counted analytically, for the compute-matched comparison (compare.py --budgets).

A matrix of W weights costs 2·W FLOPs per token forward, 2·W more for the gradient of its input,
and 2·W for the gradient of its weights (trained weights only). Attention scores are left out:
at the comparison's lengths (~100 tokens) they add under 3% to any method. Per token means per
position of a training batch (padding left out):

    QLoRA / LoRA   3F + 2H + 8A     the frozen backbone forward F, recomputed in backward (gradient
                                    checkpointing) and its input gradient; the head H at every
                                    position, forward and input gradient; the adapters A: forward,
                                    recomputed, both gradients
    side network   8S + 2H·a        its weights S: forward, recomputed, both gradients; the head on
                                    the answer tokens only (a fraction a of the tokens)
    extraction     F per stored token, once: shared by every side network trained from the store

F = 2 · n_layers · (weights of a block), H = 2 · vocab · hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Shape:
    """What the count needs to know of a backbone and its data."""

    n_layers: int
    block_weights: int  # of one transformer block's matrices
    head_weights: int  # vocab x hidden
    answer_fraction: float  # of the training tokens that carry the loss

    @classmethod
    def of(cls, model: torch.nn.Module, loss_mask: np.ndarray) -> Shape:
        """Counted from a loaded backbone (a transformers causal LM) and the store's loss mask."""
        blocks = model.model.layers
        matrices = sum(p.numel() for p in blocks[0].parameters() if p.ndim == 2)
        return cls(len(blocks), matrices, model.get_output_embeddings().weight.numel(), float(loss_mask.mean()))

    @property
    def forward(self) -> float:
        """The backbone's forward, per token."""
        return 2.0 * self.n_layers * self.block_weights

    @property
    def head(self) -> float:
        return 2.0 * self.head_weights


def per_token(shape: Shape, trainable: int, through_backbone: bool) -> float:
    """Training FLOPs per token of a method with ``trainable`` weights: adapters inside the
    backbone (``through_backbone``: QLoRA, LoRA) or a side network trained from the store."""
    if through_backbone:
        return 3 * shape.forward + 2 * shape.head + 8 * trainable
    return 8 * trainable + 2 * shape.head * shape.answer_fraction


def lora_weights(model: torch.nn.Module, rank: int) -> int:
    """The trainable weights of rank-``rank`` LoRA on every linear projection of the blocks."""
    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    return rank * sum(m.in_features + m.out_features for m in linears)
