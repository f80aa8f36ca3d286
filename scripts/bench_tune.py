"""An Optuna search with successive halving vs the full sweep of the same configurations, and one
tune worker vs two on one SQLite study, side by side.

    PYTHONPATH=$PWD python scripts/bench_tune.py [--examples 600] [--epochs 6] [--vocab 8192] [--width 128]
    PYTHONPATH=$PWD python scripts/bench_tune.py --store stores/smollm2_135m-arith-train-....zarr --parts 1

1. halving vs sweep: the 27 configurations of GRID trained as a full `sweep` (every one to the
   last step) and as `tune --sampler grid --pruner halving --reduction-factor 3 --parallel 27`
   (all 27 over one data pass, the losers stopped at each rung): wall time, steps trained, best
   validation loss of each.
2. workers: `tune` of 8 trials (no pruner) by one worker, then by two workers sharing one SQLite
   study, each process with one thread (--threads 1): wall time of each.
Everything computes on one thread per process.

The store is the tests' synthetic one (tests/train_side/tiny_store.py), larger, unless --store
names a real one: on the demo store (SmolLM2's 49k x 576 head) part 1 takes ~40 min with 2 cores,
~31 of them the 27-run sweep.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tests.train_side.tiny_store import write_tiny_store
from train_side.config import DataConfig
from train_side.training.space import Search, parse_space
from train_side.training.sweep import format_table, sweep
from train_side.training.tune import tune

GRID = {"lr": [1e-3, 3e-3, 1e-2], "reduction": [4, 8, 16], "warmup": [0.0, 0.05, 0.2]}  # 27 configurations
REPO = Path(__file__).resolve().parents[1]


def halving_vs_sweep(store: Path, work: Path, data: DataConfig) -> list[dict]:
    """Row per method: seconds, steps trained, best validation loss."""
    start = time.perf_counter()
    swept = sweep(store, work / "sweep", GRID, data=data, progress=False)
    sweep_seconds = time.perf_counter() - start
    start = time.perf_counter()
    outcome = tune(store, work / "tune", parse_space(GRID), Search(trials=27, parallel=27, sampler="grid",
                   sampler_seed=0, pruner="halving", reduction_factor=3), data=data, progress=False)
    tune_seconds = time.perf_counter() - start
    total = max(r["steps"] for r in outcome.rows)
    sweep_best = min(r["val_loss"] for r in swept)
    tune_best = outcome.best["val_loss"]
    setting = lambda row: " ".join(f"{k}={row[k]:g}" for k in GRID)  # noqa: E731
    return [
        {"method": "sweep (27 to the end)", "seconds": round(sweep_seconds, 1), "steps": 27 * total,
         "best_val_loss": sweep_best, "cost": "1.00", "best_vs_sweep": "+0.0%",
         "best_setting": setting(min(swept, key=lambda r: r["val_loss"]))},
        {"method": f"tune, halving (rf 3, rungs on {Search.rung_share:.0%} of held-out)",
         "seconds": round(tune_seconds, 1), "steps": sum(r["steps"] for r in outcome.rows),
         "best_val_loss": tune_best, "cost": f"{tune_seconds / sweep_seconds:.2f}",
         "best_vs_sweep": f"{tune_best / sweep_best - 1:+.1%}", "best_setting": setting(outcome.best),
         "pruned": sum(r["state"] == "pruned" for r in outcome.rows)},
    ]


def workers(store: Path, work: Path, data: DataConfig, n: int) -> float:
    """Wall seconds of ``n`` `train_side tune` processes (one thread each) finishing one study of 8 trials."""
    out, space = work / f"workers-{n}", work / "space.yaml"
    space.write_text("lr: {low: 1.0e-3, high: 1.0e-2, log: true}\nreduction: [2, 4]\n")
    command = [sys.executable, "-c", "from train_side.cli import main; main()", "tune", str(store), "--out", str(out),
               "--space", str(space), "--trials", "8", "--parallel", "4", "--pruner", "none", "--threads", "1",
               "--epochs", str(data.epochs), "--token-budget", str(data.token_budget)]
    start = time.perf_counter()
    processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    if any(p.wait() for p in processes):
        raise RuntimeError(f"a tune worker failed: {command}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--token-budget", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192, help="Vocabulary: the head's logits are most of a step.")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--parts", default="1,2", help="Which comparisons to run, e.g. 1 for halving vs sweep only.")
    parser.add_argument("--store", default=None, help="A real store (the demo's: stores/smollm2_135m-arith-...) "
                                                      "instead of the synthetic one; hours on a 2-core CPU.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of part 1 (the real store's head "
                                                                   "wants both cores; the workers always use one).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # tiny networks: a second thread only adds synchronisation
    data = DataConfig(epochs=args.epochs, token_budget=args.token_budget, val_fraction=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.store:
            store = Path(args.store)
            print(f"store: {store}; {args.epochs} epochs at {args.token_budget} tokens per batch\n")
        else:
            store = write_tiny_store(work / "store.zarr", n_examples=args.examples, vocab=args.vocab, width=args.width,
                                     chunk_mb=4)  # a real store's chunks: reads are not the test store's many tiny ones
            print(f"store: synthetic, {args.examples} examples, vocabulary {args.vocab}, width {args.width}; "
                  f"{args.epochs} epochs at {args.token_budget} tokens per batch\n")
        parts = args.parts.split(",")
        if "1" in parts:
            print("1. 27 configurations: successive halving over one data pass vs the full sweep")
            print(format_table(halving_vs_sweep(store, work, data)))
        if "2" not in parts:
            return
        one, two = workers(store, work, data, 1), workers(store, work, data, 2)
        print("\n2. one SQLite study of 8 trials (4 per batch), one thread per worker")
        print(format_table([{"workers": 1, "seconds": round(one, 1), "speed-up": "1.00"},
                            {"workers": 2, "seconds": round(two, 1), "speed-up": f"{one / two:.2f}"}]))


if __name__ == "__main__":
    main()
