"""The end-to-end demo on the embedded defaults: `make demo`.

Extracts the arith train and test splits with the packaged SmolLM2-135M-Instruct into ./stores
(once: a second run is a cache hit), trains two side networks from the train store alone with
`train_side train`'s defaults (the recipe docs/compare measured best: the backbone's top 8 blocks,
kept in the store, and the paper's Ladder, `--kind ladder`), evaluates both and the backbone alone
by generating chain-of-thought answers for the test split, and prints a table. Every step is a
plain CLI command, echoed as it runs, so the demo doubles as a tutorial; peak memory is each
step's own process.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from train_side.checkpoint import Checkpoint

STORES, RUNS = Path("stores"), Path("runs/demo")
TRAIN, TEST = 1000, 100  # arith examples
SIDE = {  # the two side networks: (name, train_side options); everything else is train's default
    "top": [],  # the default on a store that holds the backbone's top blocks
    "ladder": ["--kind", "ladder"],
}
EVAL = ["--split", "test", "--limit", str(TEST), "--max-new-tokens", "80", "--batch-size", "25"]


def run(*command: str) -> tuple[str, float, float]:
    """Runs a command, echoing it and its output; returns (stdout, seconds, peak RSS in MB)."""
    print(f"\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    print(out, end="", flush=True)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return out, time.perf_counter() - start, usage.ru_maxrss / 1024


def store_of(extract_output: str) -> str:
    """The store path from extract's summary (`store  PATH`, or `cache hit: PATH already ...`)."""
    for line in extract_output.splitlines():
        if line.startswith(("store ", "cache hit: ")):
            return line.removeprefix("cache hit: ").split()[-1 if line.startswith("store") else 0]
    raise RuntimeError("extract printed no store path")


def main() -> None:
    train_store = store_of(run("extract", "--split", "train", "--limit", str(TRAIN), "--root", str(STORES))[0])
    run("extract", "--split", "test", "--limit", str(TEST), "--root", str(STORES))

    rows = []
    for name, options in SIDE.items():
        out = RUNS / name
        _, seconds, train_mb = run("train_side", "train", train_store, "--out", str(out), *options)
        rows.append((name, out, seconds, train_mb))
    metrics = {}
    for name, out, *_ in rows:
        run("train_side", "eval", str(out), *EVAL)
        metrics[name] = json.loads((out / "eval" / "metrics.json").read_text())
    run("train_side", "eval", str(rows[0][1]), "--backbone-only", *EVAL)
    baseline = json.loads((rows[0][1] / "eval-backbone" / "metrics.json").read_text())

    print(f"\nSmolLM2-135M-Instruct on arith: {TRAIN} training examples, {TEST} test problems, greedy decoding\n")
    table = [("model", "accuracy", "mean CoT", "trainable", "train time", "train peak", "eval peak", "tokens/s")]
    table.append(("backbone alone", *scores(baseline), "-", "-", "-", f"{baseline['peak_rss_mb'] / 1024:.2f} GB",
                  f"{baseline['tokens_per_second']:.1f}"))
    for name, out, seconds, train_mb in rows:
        m, trained = metrics[name], Checkpoint.load(out)
        table.append((name, *scores(m), f"{trained.n_parameters / 1e6:.2f} M", f"{seconds:.0f} s",
                      f"{train_mb / 1024:.2f} GB", f"{m['peak_rss_mb'] / 1024:.2f} GB", f"{m['tokens_per_second']:.1f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def scores(metrics: dict) -> tuple[str, str]:
    return f"{metrics['accuracy']:.1%}", f"{metrics['mean_cot_tokens']:.1f}"

if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as error:
        sys.exit(error.returncode)
