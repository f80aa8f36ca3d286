"""One train_side configuration's epoch, reading its store over HTTP vs from local disk.

    python scripts/bench_remote.py [--root /tmp/bench_remote_stores] [--rounds 5] [--threads 1]

Serves --root from a local HTTP server (127.0.0.1, a thread of this process) and times an epoch
of the default Ladder configuration (store open, batch reads through the read-ahead thread, side
steps) from the local path and from the URL through the read cache: once with the cache empty
(cold), then in interleaved rounds with it warm. Prints medians and the warm/local ratio
(target <= 1.25). Uses the first complete store under --root, or extracts one there
(packaged SmolLM2-135M, 200 arith examples) if there is none.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from featurestore import FeatureStore, catalog
from train_side.config import DataConfig
from train_side.data import plan, read_ahead, split_examples
from train_side.network.model import SideConfig
from train_side.training.train import Run, RunSpec, backbone_dims


class QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server
    requests = 0

    def send_head(self):
        QuietHandler.requests += 1
        return super().send_head()

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops concurrent connections (1 s SYN retries)


def serve(root: Path) -> str:
    server = Server(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


def find_store(root: Path) -> Path:
    complete = [path for path, attrs in catalog.stores_in(root) if attrs.get("complete")]
    if complete:
        return complete[0]
    from extract.run import extract

    print(f"no complete store under {root}: extracting one (SmolLM2-135M, 200 arith examples)...")
    return Path(extract("smollm2-135m", limit=200, root=root, progress=False).store)


def epoch(location, cache_dir: str, out: Path, data: DataConfig, train: bool = True) -> float:
    """Seconds of one epoch of the default Ladder configuration, store opening included (with
    ``train`` False: the batch reads alone)."""
    start = time.perf_counter()
    store = FeatureStore.open(location, cache_dir=cache_dir)
    batches = plan(store, split_examples(store.n_examples, data.val_fraction, data.seed)[0], data.token_budget)
    side = SideConfig(**backbone_dims(store))
    run = Run.for_store(store, RunSpec.at(out, side), data=data, total_steps=len(batches))
    for batch in read_ahead(store, batches, side.inputs):
        if train:
            run.train_step(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_remote_stores"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: leave the other cores alone)")
    parser.add_argument("--token-budget", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = find_store(args.root)
    url = f"{serve(args.root)}/{path.name}"
    work = Path(tempfile.mkdtemp(prefix="bench_remote-"))
    cache = str(work / "read-cache")
    data = DataConfig(epochs=1, token_budget=args.token_budget, val_fraction=0.0)

    cold = epoch(url, cache, work / "cold", data)
    cold_requests, QuietHandler.requests = QuietHandler.requests, 0
    rows = {(source, train): [] for train in (True, False) for source in ("local disk", "HTTP, warm cache")}
    for r in range(args.rounds):
        order = list(rows) if r % 2 == 0 else list(reversed(rows))  # interleaved, alternating first
        for source, train in order:
            location = path if source == "local disk" else url
            rows[source, train].append(epoch(location, cache, work / f"{source[:4]}-{train}-{r}", data, train))

    store = FeatureStore.open(path)
    n_layers = len(SideConfig(**backbone_dims(store)).inputs)
    print(f"{store.attrs['model']['id']} store: {store.n_examples} examples, {store.n_tokens:,} tokens, codec "
          f"{store.codec.name}; default Ladder reading {n_layers} layers; token budget {args.token_budget}; "
          f"torch threads {args.threads}; {args.rounds} interleaved rounds\n")
    print(f"{'epoch':<13} {'source':<17} {'median s':>9} {'min':>7} {'max':>7} {'ratio':>7} {'HTTP requests':>14}")
    for (source, train), times in rows.items():
        ratio = np.median(times) / np.median(rows["local disk", train])
        requests = "-" if source == "local disk" else f"{QuietHandler.requests / 2 / args.rounds:.0f}"
        print(f"{'train' if train else 'reads only':<13} {source:<17} {np.median(times):>9.2f} {min(times):>7.2f} "
              f"{max(times):>7.2f} {ratio:>6.3f}x {requests:>14}")
    print(f"{'train':<13} {'HTTP, cold cache':<17} {cold:>9.2f} {'':>7} {'':>7} "
          f"{cold / np.median(rows['local disk', True]):>6.3f}x {cold_requests:>14}  (first epoch, empty cache)")
    ratio = np.median(rows["HTTP, warm cache", True]) / np.median(rows["local disk", True])
    print(f"\ntrain_side epoch, HTTP with a warm read cache / local disk: {ratio:.3f}x (target <= 1.25x)")

if __name__ == "__main__":
    main()
