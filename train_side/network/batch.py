"""What the side network reads and is scored on: a batch of right-padded examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .encoded import Encoded


@dataclass
class Batch:
    """Right-padded examples: hidden states (B, T, d) per layer (float32, or still encoded as the
    store keeps them: see ``encoded``), input_ids and loss_mask (B, T)."""

    hidden: dict[int, torch.Tensor | Encoded]
    input_ids: torch.Tensor  # int64, 0 on padding
    loss_mask: torch.Tensor  # bool, False on padding
    n_tokens: int  # real (unpadded) tokens

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device``, still encoded (the side network decodes a layer there). From
        pinned memory (``pin_memory``) the copies are asynchronous: the GPU's stream orders them
        before the step that reads them, and the host goes on at once."""
        move = lambda t: t.to(device, non_blocking=True)
        return Batch({k: move(h) for k, h in self.hidden.items()}, move(self.input_ids), move(self.loss_mask),
                     self.n_tokens)

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory (CUDA only), so ``to`` copies it asynchronously."""
        pin = lambda t: t.pin_memory()
        return Batch({k: pin(h) for k, h in self.hidden.items()}, pin(self.input_ids), pin(self.loss_mask),
                     self.n_tokens)
