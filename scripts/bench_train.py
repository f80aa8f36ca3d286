"""Training from the store vs live LST, on the packaged SmolLM2-135M and arith, side by side.

    python scripts/bench_train.py [--limit 72] [--token-budget 2048] [--epochs 2]

1. cached vs live: 8 configurations x E epochs trained from a store (the one-off extraction
   included) vs the same runs with live LST (the backbone forward runs every step, no gradient
   through it). F = backbone forward per batch (its tokens' read included), S = side step per
   batch (one configuration); ideal ratio = N*E*(F+S) / (F + N*E*S).
2. loader overhead: one configuration's epoch from the store vs from the same batches in RAM.
3. peak memory: RSS growth of train_side vs live LST at the same batch, each in a fresh process.
4. codec parity: one configuration trained from the default lossy store and from an fp32 store
   of the same data: final validation loss of each.
Both sides compute logits only at target positions (the same Run class and loss).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extract.backbones import load_backbone
from extract.run import extract
from featurestore import FeatureStore
from train_side.config import DataConfig
from train_side.data import read_ahead, read_batch
from train_side.training.sweep import configs, expand, sweep
from train_side.training.train import Run, RunSpec, backbone_dims

from benchlib import batches, in_fresh_process, peak_mb, rss_mb, schedule, serve_job, train_cached, train_live

GRID = {"kind": ["ladder", "xladder"], "lr": [1e-3, 3e-3], "reduction": [8, 16]}  # 8 configurations


def make_run(store, out: Path, params: dict, data: DataConfig, total_steps: int) -> Run:
    side, optim = configs(params, {}, {}, backbone_dims(store))
    return Run.for_store(store, RunSpec.at(out, side, optim), data=data, total_steps=total_steps)


def live_lst(backbone, store, data: DataConfig, out: Path) -> tuple[float, list[float]]:
    """Every configuration trained with the backbone in the loop; returns (seconds, forward times)."""
    steps = schedule(store, data)
    forwards = []
    start = time.perf_counter()
    for params in expand(GRID):
        run = make_run(store, out / f"live-{len(forwards)}", params, data, len(steps))
        forwards += train_live(backbone, store, steps, [run])
    return time.perf_counter() - start, forwards


def loader_overhead(store, data: DataConfig, out: Path, rounds: int = 3) -> tuple[float, float]:
    """Median epoch seconds of one configuration: (from the store, from RAM), interleaved."""
    train_batches, _ = batches(store, data)
    params = expand(GRID)[0]
    layers = configs(params, {}, {}, backbone_dims(store))[0].inputs
    in_ram = [read_batch(store, b, layers) for b in train_batches]
    seconds = {"store": [], "ram": []}
    for r in range(rounds):
        for source in seconds:
            run = make_run(store, out / f"loader-{source}-{r}", params, data, len(train_batches))
            start = time.perf_counter()
            stream = read_ahead(store, train_batches, layers) if source == "store" else iter(in_ram)
            for batch in stream:
                run.train_step(batch)
            seconds[source].append(time.perf_counter() - start)
    return float(np.median(seconds["store"])), float(np.median(seconds["ram"]))


def peak_memory(mode: str, store_path: Path, data: DataConfig, out: Path) -> float:
    """RSS growth (MB) of one configuration's epoch, measured in a fresh process."""
    job = {"mode": mode, "store": str(store_path), "data": vars(data), "out": str(out / mode)}
    return in_fresh_process(__file__, job, out / mode)["peak_mb"]


def probe(job: dict) -> dict:
    """Runs in the fresh process: RSS growth (MB) from after the imports to the peak."""
    torch.manual_seed(0)
    data = DataConfig(**job["data"])
    baseline = rss_mb()
    store = FeatureStore.open(job["store"])
    train_batches, _ = batches(store, data)
    run = make_run(store, Path(job["out"]) / "run", expand(GRID)[0], data, len(train_batches))
    if job["mode"] == "cached":
        train_cached(store, train_batches, run)
    else:
        train_live(load_backbone("smollm2-135m"), store, train_batches, [run])
    return {"peak_mb": peak_mb(baseline)}


def final_val_loss(store_path: Path, out: Path, data: DataConfig) -> float:
    [row] = sweep(store_path, out, {"kind": ["ladder"]}, data=data, progress=False)
    return row["val_loss"]


def cached_vs_live(store, work: Path, data: DataConfig, epochs: int, extract_seconds: float, n_batches: int) -> None:
    """Every configuration from the store (one-off extraction included) vs with the backbone live."""
    sweep_start = time.perf_counter()
    sweep(store, work / "sweep", GRID, data=data, progress=False)
    cached = extract_seconds + time.perf_counter() - sweep_start
    side_seconds = [json.loads((work / "sweep" / d / "side_config.json").read_text())["train_seconds"]
                    for d in (p.name for p in (work / "sweep").iterdir() if p.is_dir())]
    S = float(np.mean(side_seconds)) / (epochs * n_batches)

    backbone = load_backbone("smollm2-135m")
    live, forwards = live_lst(backbone, store, data, work / "live")
    F = float(np.median(forwards))
    NE = len(expand(GRID)) * epochs
    ideal = NE * (F + S) / (F + NE * S)
    print(f"\n1. cached (extraction {extract_seconds:.0f} s + sweep)  {cached:7.1f} s")
    print(f"   live LST                               {live:7.1f} s")
    print(f"   speed-up {live / cached:.2f}x;  F = {F:.2f} s, S = {S:.2f} s per batch;  ideal {ideal:.2f}x;  "
          f"reached {live / cached / ideal:.0%} of ideal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=72)
    parser.add_argument("--token-budget", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--parity-epochs", type=int, default=4)
    parser.add_argument("--parts", default="1,2,3,4", help="Which of the four comparisons to run.")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    data = DataConfig(epochs=args.epochs, token_budget=args.token_budget, val_fraction=0.1)
    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    n_configs = len(expand(GRID))

    start = time.perf_counter()
    extraction = extract("smollm2-135m", limit=args.limit, root=work / "stores", progress=False)
    extract_seconds = time.perf_counter() - start
    store = FeatureStore.open(extraction.store)
    train_batches, _ = batches(store, data)
    print(f"SmolLM2-135M float32, CPU ({torch.get_num_threads()} threads); {store.n_tokens} tokens of arith, "
          f"{len(train_batches)} training batches of <= {args.token_budget} padded tokens; "
          f"{n_configs} configurations x {args.epochs} epochs")
    if "1" in parts:
        cached_vs_live(store, work, data, args.epochs, extract_seconds, len(train_batches))
    if "2" in parts:
        from_store, from_ram = loader_overhead(store, data, work / "loader")
        print(f"\n2. epoch from the store {from_store:.1f} s, from RAM {from_ram:.1f} s: loader overhead "
              f"{from_store / from_ram - 1:+.0%}")

    if "3" in parts:
        cached_mb = peak_memory("cached", Path(extraction.store), data, work / "mem")
        live_mb = peak_memory("live", Path(extraction.store), data, work / "mem")
        print(f"\n3. peak RSS growth: train_side {cached_mb:.0f} MB, live LST {live_mb:.0f} MB "
              f"({cached_mb / live_mb:.0%} of live)")

    if "4" in parts:
        parity_loss(args, extraction, work)
    print(f"\n(work files in {work})")


def parity_loss(args, extraction, work: Path) -> None:
    lossless = extract("smollm2-135m", limit=args.limit, root=work / "stores", codec="fp32", progress=False)
    parity = DataConfig(epochs=args.parity_epochs, token_budget=args.token_budget, val_fraction=0.1)
    lossy_loss = final_val_loss(Path(extraction.store), work / "parity-int8o", parity)
    fp32_loss = final_val_loss(Path(lossless.store), work / "parity-fp32", parity)
    print(f"\n4. validation loss after {args.parity_epochs} epochs: int8o store {lossy_loss:.4f}, fp32 store "
          f"{fp32_loss:.4f} ({lossy_loss / fp32_loss - 1:+.2%})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        serve_job(sys.argv[2], probe)
    else:
        main()
