"""Generation speed through the Python API (SideModel.generate) against `train_side eval`'s loop.

    python scripts/bench_side_model.py [--model smollm2-135m] [--rounds 3] [--kind ladder]

Extracts a small arith store (a cache hit when --root already holds it), trains a side network on
it for one epoch (speed does not depend on training), then generates for the same arith test
prompts both ways on ONE loaded backbone:

- eval loop: the Pipeline `train_side eval` builds (backbone, FrozenHead, load_side, the store's
  codec) driven by train_side.inference.generate.generate, as evaluate.answer() drives it;
- API: SideModel.from_pretrained(run) then model.generate(input_ids, attention_mask=...,
  max_new_tokens=N), left-padded like transformers users pass batches.

Every sequence generates exactly N tokens (no early stop: eos_token_id=[] / a stop that never
fires), so both do the same work; the greedy tokens are checked identical. Rounds alternate
between the two (this machine drifts by +-10% over minutes); medians are reported. Target: the
API within 10% of the eval loop's tokens/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extract.run import extract
from extract.tasks.datasets import load_examples
from extract.tasks.prompts import encode_prompt
from featurestore import get_codec
from train_side import SideModel
from train_side.checkpoint import Checkpoint, load_side
from train_side.config import DataConfig
from train_side.inference.generate import Pipeline, generate, left_pad
from train_side.training.train import train


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--kind", default="ladder", choices=("ladder", "xladder"))
    parser.add_argument("--root", default="stores", help="Where the small train store is extracted (cached).")
    parser.add_argument("--train-examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--single", type=int, default=4, help="Prompts generated one at a time (batch size 1).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", default=None, help="Measure this trained run instead of training one.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default torch's); 1 is steadier on a CPU other jobs share")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.run:
        run = Path(args.run)
    else:
        store = extract(args.model, limit=args.train_examples, root=args.root, progress=False).store
        run = Path(tempfile.mkdtemp(prefix="bench-side-model-")) / args.kind
        train(store, run, side={"kind": args.kind}, data=DataConfig(epochs=1), progress=False)
        print(f"trained {run}", file=sys.stderr, flush=True)

    model = SideModel.from_pretrained(run)
    trained = Checkpoint.load(run)
    backbone = model.backbone  # one backbone for both paths: the same weights, the same memory
    eval_pipeline = Pipeline(backbone, model.pipeline.head, load_side(run, backbone.device),
                             get_codec(trained.store.codec))
    examples, _ = load_examples("arith", "test", limit=args.batch_size)
    prompts = [encode_prompt(backbone.tokenizer, e.question, "plain") for e in examples]
    pad = backbone.tokenizer.pad_token_id
    n = args.new_tokens

    def eval_loop(batch):
        return generate(eval_pipeline, batch, max_new_tokens=n, pad_id=pad, stop=lambda tokens: False)

    def api(batch):
        ids, mask = left_pad(batch, pad)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=[])
        return out[:, ids.shape[1]:].tolist()

    cases = {f"batch {args.batch_size}": [prompts], "batch 1": [[p] for p in prompts[: args.single]]}
    for batches in cases.values():  # identical tokens, and a warm-up
        assert [eval_loop(b) for b in batches] == [api(b) for b in batches], "the API's tokens differ from eval's"
    print("warm-up done: the API's tokens equal eval's", file=sys.stderr, flush=True)
    speeds = {(case, path): [] for case in cases for path in ("eval loop", "API")}
    for r in range(args.rounds):
        for case, batches in cases.items():
            for path, function in (("eval loop", eval_loop), ("API", api)):
                seconds, _ = timed(lambda: [function(b) for b in batches])
                speeds[case, path].append(sum(len(b) for b in batches) * n / seconds)
                print(f"round {r + 1}: {case}, {path}: {speeds[case, path][-1]:.1f} tokens/s", file=sys.stderr,
                      flush=True)

    print(f"{args.model} {backbone.info['dtype']} on {backbone.device} ({torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores), {args.kind} (r=8, {trained.store.codec['name']}); {n} new tokens per "
          f"sequence, median of {args.rounds} interleaved rounds; greedy tokens identical\n")
    print(f"{'case':<10} {'eval loop tok/s':>16} {'API tok/s':>10} {'API / eval':>11}   rounds (eval | API)")
    for case in cases:
        e, a = (float(np.median(speeds[case, p])) for p in ("eval loop", "API"))
        rounds = " ".join(f"{v:.1f}" for v in speeds[case, "eval loop"]) + " | " + \
            " ".join(f"{v:.1f}" for v in speeds[case, "API"])
        print(f"{case:<10} {e:16.1f} {a:10.1f} {a / e:10.2f}x   {rounds}")


if __name__ == "__main__":
    main()
