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
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extract.backbone import resolve_backbone
from extract.data import load_examples
from extract.loop import extract_batches, padded_batch
from extract.plan import tokenize
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--limit", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--codecs", default="fp16,int8o", help="lossless first, then the default lossy codec")
    args = parser.parse_args()

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
