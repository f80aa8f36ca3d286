"""Generation tokens/s with a side network vs the backbone alone: same prompts, batch, dtype.

    python scripts/bench_generate.py [--model smollm2-135m] [--batch-size 16] [--new-tokens 64]

Both paths run the same Pipeline (backbone step with its KV cache -> head); the side path adds
the codec round-trip of the tapped hidden states and the side network's step with its own KV
cache. Every sequence generates exactly --new-tokens tokens (no early stop), so both paths do
the same work; weights are freshly initialised (speed does not depend on training). Rounds
alternate between the paths (this machine drifts by +-10% over minutes); the median is
reported. Target: side >= 0.7x the backbone's tokens/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from extract.backbones import load_backbone
from extract.tasks.datasets import load_examples
from extract.tasks.prompts import encode_prompt
from featurestore import get_codec
from train_side.inference.generate import Pipeline, generate
from train_side.network.model import FrozenHead, SideConfig, SideNetwork


def tokens_per_second(pipeline: Pipeline, prompts: list[list[int]], new_tokens: int, pad_id: int) -> float:
    start = time.perf_counter()
    outputs = generate(pipeline, prompts, max_new_tokens=new_tokens, pad_id=pad_id, stop=lambda tokens: False)
    return sum(map(len, outputs)) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--codec", default="int8o")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    backbone = load_backbone(args.model, quantization=args.quantization, dtype=args.dtype)
    head = FrozenHead(*backbone.head()).to(backbone.device)
    examples, _ = load_examples("arith", "test", limit=args.batch_size)
    prompts = [encode_prompt(backbone.tokenizer, e.question, "plain") for e in examples]
    pad_id = backbone.tokenizer.pad_token_id
    dims = {k: backbone.info[k] for k in ("n_layers", "hidden_size", "intermediate_size")}
    torch.manual_seed(0)
    codec = get_codec(args.codec)
    pipelines = {"backbone alone": Pipeline(backbone, head)}
    for kind in ("ladder", "xladder"):
        side = SideNetwork(SideConfig(**dims, kind=kind)).to(backbone.device).eval()
        pipelines[f"{kind} (r=8, {args.codec})"] = Pipeline(backbone, head, side, codec)

    tokens_per_second(pipelines["backbone alone"], prompts, 4, pad_id)  # warm-up
    speeds: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.rounds):
        for name, pipeline in pipelines.items():
            speeds[name].append(tokens_per_second(pipeline, prompts, args.new_tokens, pad_id))

    base = float(np.median(speeds["backbone alone"]))
    weights = backbone.info["dtype"] + ("" if args.quantization == "none" else f" {args.quantization}")
    print(f"{args.model} {weights} on {backbone.device} ({torch.get_num_threads()} threads); "
          f"{args.batch_size} arith prompts, {args.new_tokens} new tokens each, median of {args.rounds} rounds\n")
    print(f"{'path':<24} {'tokens/s':>9} {'vs backbone':>12}")
    for name, values in speeds.items():
        median = float(np.median(values))
        print(f"{name:<24} {median:9.1f} {median / base:11.2f}x")


if __name__ == "__main__":
    main()
