"""Extraction throughput vs a bare forward loop of the same model, dtype and batches.

    python scripts/bench_extract.py [--model smollm2-135m] [--limit 320] [--rounds 2]

Measured side by side in one process on the same planned batches, in interleaved rounds (this
machine's speed drifts by +-10% over minutes, so each extraction is compared with the bare pass
of its own round):
  bare forward    backbone.hidden_states over every batch, nothing kept
  extract <codec> the extraction loop: forward, padding stripped, rows encoded, compressed,
                  checksummed and written on the background thread, store finalised (the last
                  shard's write cannot overlap any forward: it is in the time)
Reports tokens/s per round and the median ratio to the bare forward (target >= 90%).

    python scripts/bench_extract.py --ranks 2 [--limit 160] [--rounds 2]

compares instead, on the same CPUs and data, N ranks of one thread each (gloo, as under torchrun)
with one rank of N threads, both the real `extract` in fresh processes, in interleaved rounds:
store tokens / extraction seconds of rank 0 (store creation to `complete`), and the median ratio
(target >= 90%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from extract.backbones import resolve_backbone
from extract.tasks.datasets import load_examples
from extract.loop import extract_batches, padded_batch
from extract.plan import tokenize
from extract.run import extract
from featurestore import StoreSpec, StoreWriter
from featurestore.layout import plan_batches


def bare_forward(backbone, tokens, batches) -> float:
    start = time.perf_counter()
    for first, last in batches:
        ids, mask = padded_batch(tokens, first, last, backbone.tokenizer.pad_token_id)
        backbone.hidden_states(ids, mask)
    return time.perf_counter() - start


def extraction(backbone, layout, batches, codec: str, directory: Path) -> float:
    layers = tuple(range(backbone.n_layers + 1))
    spec = StoreSpec(layers, backbone.hidden_size, codec, {"bench": "extract"})
    head, head_config = backbone.head()
    writer = StoreWriter(directory / f"{codec}.zarr", spec, layout.tokens, meta=layout.meta, head=head,
                         head_config=head_config)
    start = time.perf_counter()
    extract_batches(backbone, layout.tokens, layers, batches, writer)
    writer.close()
    return time.perf_counter() - start


def ranks_comparison(args) -> None:
    """--ranks N: N ranks x 1 thread against 1 rank x N threads, in interleaved rounds."""
    n, codec = args.ranks, args.codecs.split(",")[-1]
    runs = {f"1 rank x {n} threads": (1, n), f"{n} ranks x 1 thread": (n, 1)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (world, threads) in runs.items():
            n_tokens, took = spawned_extraction(args, codec, world, threads)
            seconds[name].append(took)
    print(f"{args.model}, codec {codec}, {args.limit} examples, {n_tokens} tokens, {os.cpu_count()} CPUs\n")
    single = seconds[f"1 rank x {n} threads"]
    print(f"{'run':<22}" + "".join(f"{f'round {r + 1} tok/s':>16}" for r in range(args.rounds)) + f"{'vs 1 rank (median)':>20}")
    for name, times in seconds.items():
        ratios = [s / t for s, t in zip(single, times)]
        print(f"{name:<22}" + "".join(f"{n_tokens / t:>16.0f}" for t in times) + f"{float(np.median(ratios)):>19.0%}")


def spawned_extraction(args, codec: str, world: int, threads: int) -> tuple[int, float]:
    """One extraction by ``world`` fresh processes of ``threads`` threads each: the store's tokens,
    and rank 0's seconds from opening the store to completing it."""
    directory = Path(tempfile.mkdtemp())
    try:
        torch.multiprocessing.spawn(rank_main, args=(world, threads, free_port(), args, codec, directory), nprocs=world)
        result = json.loads((directory / "result.json").read_text())
        return result["n_tokens"], result["seconds"]
    finally:
        shutil.rmtree(directory)


def rank_main(rank: int, world: int, threads: int, port: int, args, codec: str, directory: Path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    result = extract(args.model, root=directory / "root", dtype=args.dtype, device="cpu", limit=args.limit, codec=codec,
                     token_budget=args.token_budget, progress=False)
    if rank == 0:
        (directory / "result.json").write_text(json.dumps({"n_tokens": result.n_tokens, "seconds": result.seconds}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--limit", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--codecs", default="fp16,int8o", help="lossless first, then the default lossy codec")
    parser.add_argument("--ranks", type=int, default=None,
                        help="compare N CPU ranks x 1 thread with 1 rank x N threads (codec: the last of --codecs)")
    args = parser.parse_args()
    if args.ranks:
        return ranks_comparison(args)

    source = resolve_backbone(args.model, dtype=args.dtype)
    backbone = source.load()
    examples, _ = load_examples("arith", "train", limit=args.limit)
    layout = tokenize(examples, backbone.tokenizer, "plain", 512, False)
    batches = plan_batches(np.diff(layout.tokens.offsets), args.token_budget)
    n = layout.tokens.n_tokens
    print(f"{args.model} {backbone.info['dtype']} on {backbone.device} ({torch.get_num_threads()} threads): "
          f"{len(batches)} batches, {n} tokens, all {backbone.n_layers + 1} hidden states\n")
    bare_forward(backbone, layout.tokens, batches[:2])  # warm-up

    codecs = args.codecs.split(",")
    seconds: dict[str, list[float]] = {"bare forward": []} | {f"extract {c}": [] for c in codecs}
    for _ in range(args.rounds):
        seconds["bare forward"].append(bare_forward(backbone, layout.tokens, batches))
        for codec in codecs:
            directory = Path(tempfile.mkdtemp())
            try:
                seconds[f"extract {codec}"].append(extraction(backbone, layout, batches, codec, directory))
            finally:
                shutil.rmtree(directory)

    bare = seconds["bare forward"]
    print(f"{'run':<16}" + "".join(f"{f'round {r + 1} tok/s':>16}" for r in range(args.rounds)) + f"{'vs bare (median)':>18}")
    for name, times in seconds.items():
        ratios = [b / t for b, t in zip(bare, times)]
        print(f"{name:<16}" + "".join(f"{n / t:>16.0f}" for t in times) + f"{float(np.median(ratios)):>17.0%}")


if __name__ == "__main__":
    main()
