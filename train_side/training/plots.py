"""Loss curves: one run's training and validation loss, and validation loss across a sweep."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected so that short runs are not dragged to the start."""
    out, average = [], 0.0
    for i, v in enumerate(values, start=1):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight**i))
    return out


def loss_curve(run_dir: Path) -> Path:
    """``loss.png`` in the run directory: training loss (raw and smoothed) and validation loss."""
    metrics = _metrics(run_dir)
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    rungs = [(m["step"], m["rung_loss"]) for m in metrics if "rung_loss" in m]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, label="train")
        ax.plot(steps, _smooth(list(losses)), color="tab:blue", label="train (smoothed)")
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="validation")
    if rungs:
        ax.plot(*zip(*rungs), "x", color="tab:red", label="rung (share of held-out)")
    ax.set(xlabel="step", ylabel="loss per target token", title=Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(run_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_runs(run_dirs: list[Path], path: Path) -> Path:
    """Validation loss of every run of a sweep against the step."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        val = [(m["step"], m["val_loss"]) for m in _metrics(run_dir) if "val_loss" in m]
        if val:
            ax.plot(*zip(*val), "o-", label=Path(run_dir).name)
    ax.set(xlabel="step", ylabel="validation loss", title="sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
