"""Which first rung successive halving needs: bench_tune's 27 configurations trained to the end over
one data pass, each validated at many steps, then halving (reduction factor 3) replayed from those
curves for each first rung. A trial's curve does not depend on the others (a sweep's runs are
independent), so a replay trains exactly what the search would; it prints steps and the best found.

    PYTHONPATH=$PWD python scripts/replay_halving.py --store stores/smollm2_135m-arith-train-....zarr

~45 min on the demo store with 2 cores (the validations are most of the extra over a sweep).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench_tune import GRID
from featurestore import FeatureStore
from train_side.config import DataConfig
from train_side.training.sweep import configs, expand, format_table, run_name
from train_side.training.halving import kept
from train_side.training.space import Search
from train_side.training.train import RunSpec, Watch, backbone_dims, fit, recipe
from train_side.training.tune import rung_steps

FIRST_RUNGS = (2, 4, 6, 12, 18)
RF = 3


def curves(store: FeatureStore, data: DataConfig, out: Path, steps: set[int],
           share: float) -> dict[str, dict[int, float]]:
    """{run: {step: loss}} at ``steps`` (on the rungs' ``share`` of the held-out set) and the last step
    (its validation loss), every run trained to the end."""
    side = recipe(store, {}, swept=GRID)
    specs = [RunSpec(run_name(p), out / run_name(p), *configs(p, side, {}, backbone_dims(store))) for p in expand(GRID)]
    seen: dict[str, dict[int, float]] = {}

    def record(runs, losses):
        for run, loss in zip(runs, losses):
            seen.setdefault(run.name, {})[run.step] = run.val_loss if run.step == run.total_steps else loss
        return []

    fit(store, specs, data, progress=True, watch=Watch(due=steps.__contains__, share=share, stop=record))
    return seen


def halving(seen: dict[str, dict[int, float]], rungs: list[int], total: int) -> tuple[int, float]:
    """(steps trained, best final validation loss kept) of halving judged at ``rungs``."""
    alive, stopped = list(seen), 0
    for rung in rungs:
        going_on = sorted(alive, key=lambda name: seen[name][rung])[:kept(len(alive), RF)]
        stopped += rung * (len(alive) - len(going_on))
        alive = going_on
    return stopped + total * len(alive), min(seen[name][total] for name in alive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--token-budget", type=int, default=1024)
    parser.add_argument("--rung-share", type=float, default=Search.rung_share,
                        help="Share of the held-out set the rungs rank on (tune --rung-share).")
    args = parser.parse_args()
    torch.set_num_threads(2)
    store = FeatureStore.open(args.store)
    data = DataConfig(epochs=args.epochs, token_budget=args.token_budget, val_fraction=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        steps = {r * RF ** k for r in FIRST_RUNGS for k in range(6)}
        seen = curves(store, data, Path(tmp), steps, args.rung_share)
    total = max(next(iter(seen.values())))
    best = min(c[total] for c in seen.values())
    rows = []
    for first in FIRST_RUNGS:
        rungs = rung_steps(first, RF, total)
        trained, found = halving(seen, rungs, total)
        rows.append({"first_rung": first, "rungs": ",".join(map(str, rungs)), "steps": trained,
                     "share": f"{trained / (len(seen) * total):.0%}", "best_found": round(found, 4),
                     "vs_sweep": f"{found / best - 1:+.1%}"})
    print(f"{len(seen)} configurations, {total} steps each; the sweep's best: {best:.4f}\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
