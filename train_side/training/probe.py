"""Linear probes of every stored layer: how much of the next token each hidden state already holds.

For hidden state k the probe is one affine map into the frozen LM head (a "tuned lens")::

    logits_k = head(W_k @ rms_norm(h_k) + b_k)      # h_L is post-norm already: no rms_norm there

with W_k starting as the backbone's final norm, so that before training each probe is the "logit
lens" (the backbone's own head read at layer k) and at k = L exactly the backbone. All probes train
together from the store, one pass per epoch, no backbone loaded. If no probe reaches a loss, no side
network that reads those states linearly will either: the lever is then more computation on them
(deeper side networks, the backbone's own top blocks) rather than better reading.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from featurestore import FeatureStore
from featurestore.errors import UserError

from ..config import PROBE_LR, DataConfig, OptimConfig
from ..data import epochs_from, loader_settings, plan, read_ahead, split_examples
from ..devices import resolve_device
from ..network.encoded import decoded
from ..network.loss import next_token_loss
from ..network.model import FrozenHead, rms_inverse
from .train import lr_factor


class ProbeError(UserError, ValueError):
    """Layers to probe that the store does not hold."""


class LensProbe(nn.Module):
    """One affine map per probed layer into the frozen head."""

    def __init__(self, layers: list[int], final: int, norm_weight: Tensor):
        super().__init__()
        self.layers, self.final = list(layers), final
        d = len(norm_weight)
        start = lambda k: torch.eye(d) if k == final else torch.diag(norm_weight)
        self.weight = nn.ParameterList(nn.Parameter(start(k)) for k in self.layers)  # (d, d) each
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(d)) for _ in self.layers)

    def forward(self, h: Tensor, i: int) -> Tensor:
        """(B, T, d) -> (B, T, d), the head's input as probe i reads layer self.layers[i]."""
        h = decoded(h).float()
        if self.layers[i] != self.final:
            h = h * rms_inverse(h, 1e-6)
        return h @ self.weight[i].T + self.bias[i]


@dataclass
class ProbeResult:
    layer: int
    lens_loss: float  # the untrained probe: the backbone's head read at this layer
    probe_loss: float  # after training


def norm_scale(head: FrozenHead, head_config: dict) -> Tensor:
    """The scale of the backbone's final norm, as the stored head keeps it (ones without a weight)."""
    if head.norm_weight is None:
        return torch.ones(head.weight.shape[1])
    return head.norm_weight.cpu() + float((head_config.get("norm") or {}).get("weight_offset", 0.0))


@torch.no_grad()
def val_losses(probe: LensProbe, head: FrozenHead, batches) -> list[float]:
    totals, targets = np.zeros(len(probe.layers)), 0
    for batch in batches:
        n = int(batch.loss_mask[:, 1:].sum())
        for i, k in enumerate(probe.layers):
            totals[i] += next_token_loss(probe(batch.hidden[k], i), batch.input_ids, batch.loss_mask, head).item() * n
        targets += n
    return list(totals / targets)


def probe_layers(store: FeatureStore, layers: list[int] | None = None, data: DataConfig | None = None,
                 optim: OptimConfig | None = None, device: str = "auto", progress: bool = True) -> list[ProbeResult]:
    """Trains a probe of each of ``layers`` (default: every stored layer) on the store's training
    split and returns each one's validation loss before (logit lens) and after training."""
    data, device = data or DataConfig(epochs=1), resolve_device(device)
    optim = (optim or OptimConfig()).with_default_lr(PROBE_LR)  # affine maps: not a side network's lr
    layers = sorted(layers or store.layers)
    missing = sorted(set(layers) - set(store.layers))
    if missing:
        raise ProbeError(f"the store holds no hidden states {missing} (it has {list(store.layers)}); probe those it has")
    weights, head_config = store.head()
    head = FrozenHead(weights, head_config).to(device)
    final = max(store.layers)
    torch.manual_seed(optim.seed)
    probe = LensProbe(layers, final, norm_scale(head, head_config)).to(device)
    train_idx, val_idx = split_examples(store.n_examples, data.val_fraction, data.seed)
    train, val = plan(store, train_idx, data.token_budget), plan(store, val_idx, data.token_budget)
    loader = loader_settings(device)
    validation = [b.to(device) for b in read_ahead(store, val, layers, **loader)]
    before = val_losses(probe, head, validation)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=optim.lr, weight_decay=0.0)
    total = data.total_steps(len(train))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, optim))
    with tqdm(total=total, unit="step", desc="probe", disable=not progress, file=sys.stderr) as bar:
        for _, order in epochs_from(len(train), data):
            batches = [train[i] for i in order]
            for batch in read_ahead(store, batches, layers, **loader):
                batch = batch.to(device)
                loss = sum(next_token_loss(probe(batch.hidden[k], i), batch.input_ids, batch.loss_mask, head)
                           for i, k in enumerate(layers))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.update()
                bar.set_postfix(mean_loss=f"{loss.item() / len(layers):.3f}")
    after = val_losses(probe, head, validation)
    return [ProbeResult(k, round(b, 4), round(a, 4)) for k, b, a in zip(layers, before, after)]


def write_table(results: list[ProbeResult], out: Path) -> str:
    """OUT/probe.json and a Markdown table (returned)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps([r.__dict__ for r in results], indent=1) + "\n")
    rows = [f"| {r.layer} | {r.lens_loss:.4f} | {r.probe_loss:.4f} |" for r in results]
    return "\n".join(["| layer | logit lens (untrained) | linear probe |", "|---|---|---|", *rows])
