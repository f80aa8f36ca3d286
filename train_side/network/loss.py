"""Next-token cross-entropy on the target tokens through the frozen LM head, in bounded memory.

Logits over the vocabulary dominate memory (V = 49152 x tokens), so they are computed only at the
positions that predict a target, a chunk of rows at a time, and the gradient wrt y is computed in
the same pass: one chunk of logits is alive at a time (updated in place into its softmax, plus
logsumexp's temporary), about 64 MB whatever the vocabulary, and nothing of them is kept for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from featurestore.errors import UserError

from .batch import Batch
from .model import FrozenHead, SideNetwork


class LossError(UserError, ValueError):
    """A batch the loss cannot be computed on; the message says why."""


class LinearCrossEntropy(torch.autograd.Function):
    """Mean over rows of cross_entropy(softcap(y @ W.T + b), targets); gradient for y only (W, b are frozen)."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, softcap: float | None,
                chunk_size: int) -> Tensor:
        n = len(y)
        loss_sum = y.new_zeros(())
        grad = torch.zeros_like(y) if ctx.needs_input_grad[0] else None
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            logits = F.linear(y[rows], weight, bias)  # (chunk, V): the one large buffer, reused in place below
            if softcap is not None:
                logits.div_(softcap).tanh_()  # tanh(x / cap), kept for the slope
                slope = 1 - logits.square() if grad is not None else None  # d softcap(x) / dx = 1 - tanh^2
                logits.mul_(softcap)
            target = targets[rows, None]  # (chunk, 1)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (chunk, 1)
            loss_sum += (lse - logits.gather(1, target)).sum()
            if grad is not None:
                dlogits = logits.sub_(lse).exp_()  # softmax
                dlogits.scatter_add_(1, target, -torch.ones_like(lse))  # softmax - onehot
                if softcap is not None:
                    dlogits *= slope
                grad[rows] = dlogits @ weight  # (chunk, d)
        ctx.save_for_backward(None if grad is None else grad / n)
        return loss_sum / n

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None, None, None


def chunk_rows(vocab_size: int, megabytes: float = 64) -> int:
    """Rows per chunk so that one chunk of float32 logits takes about ``megabytes``: big enough for
    an efficient matmul, small enough that the vocabulary never dominates memory (Gemma 3: 262k)."""
    return max(16, int(megabytes * 2**20) // (4 * vocab_size))


def linear_cross_entropy(y: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None,
                         softcap: float | None = None, chunk_size: int | None = None) -> Tensor:
    """Mean cross-entropy of the logits softcap(y @ weight.T + bias) of y (N, d) against targets (N,),
    with weight (V, d) frozen; peak memory is about two (chunk_size, V) blocks of logits (default:
    ``chunk_rows(V)``)."""
    return LinearCrossEntropy.apply(y, weight, bias, targets, softcap, chunk_size or chunk_rows(len(weight)))


def next_token_loss(y: Tensor, input_ids: Tensor, loss_mask: Tensor, head: FrozenHead,
                    chunk_size: int | None = None) -> Tensor:
    """Mean next-token cross-entropy over the target tokens of a batch.

    y (B, T, d): side network output; input_ids, loss_mask (B, T): loss_mask 1 on target tokens, 0 on
    prompts and padding. Position t - 1 predicts token t, so a target at position 0 is never scored.
    """
    predicts = loss_mask[:, 1:].bool()  # (B, T - 1): position t predicts a target at t + 1
    if not predicts.any():
        raise LossError("the batch has no target tokens to score")
    y_sel = y[:, :-1][predicts]  # (N, d)
    targets = input_ids[:, 1:][predicts].long()  # (N,)
    return linear_cross_entropy(y_sel, head.weight, targets, head.bias, head.softcap, chunk_size)


def batch_loss(model: SideNetwork, head: FrozenHead, batch: Batch) -> torch.Tensor:
    """Mean next-token loss over a batch's targets; bf16 autocast on GPU, the loss in float32."""
    device = batch.input_ids.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        y = model({k: batch.hidden[k] for k in model.config.inputs})
    return next_token_loss(y.float(), batch.input_ids, batch.loss_mask, head)


def target_count(batch: Batch) -> int:
    """The target tokens a batch's loss is the mean over (a target at position 0 is never scored)."""
    return int(batch.loss_mask[:, 1:].sum())


@torch.no_grad()
def mean_loss(model: SideNetwork, head: FrozenHead, batches) -> float:
    """Mean loss per target token over batches (teacher-forced: no generation, no backbone)."""
    model.eval()
    total = targets = 0.0
    for batch in batches:
        n = target_count(batch)
        total += batch_loss(model, head, batch).item() * n
        targets += n
    return total / targets


@torch.no_grad()
def token_losses(y: Tensor, input_ids: Tensor, loss_mask: Tensor, head: FrozenHead) -> Tensor:
    """The cross-entropy of every target token (N,), in the order of ``loss_mask`` (row-major): what
    ``next_token_loss`` averages, kept apart so a loss can be split by kind of token."""
    predicts = loss_mask[:, 1:].bool()
    y_sel, targets = y[:, :-1][predicts], input_ids[:, 1:][predicts].long()
    chunk = chunk_rows(len(head.weight))
    return torch.cat([F.cross_entropy(head(y_sel[i:i + chunk]), targets[i:i + chunk], reduction="none")
                      for i in range(0, len(y_sel), chunk)])
