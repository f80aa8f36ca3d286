"""Writer benchmark: can the store writer keep up with a GPU's forward?

    python scripts/bench_writer.py [--rounds 3] [--tokens 4096] [--layers 4]

1. Stages, values per second on one core (torch and numpy limited to one thread), on rows shaped
   like an 8B model's hidden states (d = 4096, Gaussian channels of varied scale plus massive
   activations in a few channels), int8o:
     quantise   numpy before issue 15 (float32 einsum sums, 512-row blocks), numpy now (fixed-order
                sums, the same bits as torch, ~1 MB blocks), torch on this CPU (512-row blocks; the
                encoder extraction runs on a GPU)
     compress   zstd (content checksum) of the codes, as Zarr does per chunk: level 3 (the stores before
                issue 15) and the level the stores use now
     checksum   sha256 of the compressed chunk (the shard manifest's)
     write      the compressed chunk to a file (page cache)
2. The whole writer (StoreWriter + BackgroundWriter: encode, compress, checksum, write a store) in a
   fresh process with 1 and 2 threads (BackgroundWriter threads and Zarr's pool), given float32
   rows (the CPU encodes: --encode host) or rows already encoded (the GPU encodes: --encode
   device): values/s of wall time and values per CPU-second (all threads), every codec.
3. The projection: Llama-3.2-1B, Llama-3.1-8B and a 70B model on one H200 (forward tokens/s from
   model FLOPs at extract.estimate.MFU of the bf16 peak), the host cores the writer needs to stay
   forward-bound with --layers all, every:4 and top:3, from the CPU-seconds per value measured in 2.

Every measurement is repeated in interleaved rounds; tables give medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

D = 4096
CODECS = ["fp32", "fp16", "bf16", "int8", "int8o"]
MODELS = [  # name, blocks, width, MLP width, where its weights fit
    ("Llama-3.2-1B", 16, 2048, 8192, "bf16"),
    ("Llama-3.1-8B", 32, 4096, 14336, "bf16"),
    ("70B (Llama-3.1-70B)", 80, 8192, 28672, "nf4: bf16 weights (141 GB) do not fit"),
]


def rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D), dtype=np.float32) * rng.uniform(0.2, 3, D).astype(np.float32)
    x[:, [7, 1999]] *= 400  # massive activations
    return x


def old_int8o_encode(x, outliers=4, step=0.12, max_step=0.069):
    """featurestore.codecs.Int8Outlier.encode as it was before issue 15 (float32 einsum sums)."""
    from featurestore.codecs import top_abs_indices

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    magnitude = np.abs(x)
    index = top_abs_indices(magnitude, outliers)
    r = np.arange(n)[:, None]
    value = x[r, index]
    energy_row = np.einsum("ij,ij->i", x, x).astype(np.float64)
    energy_rest = np.maximum(energy_row - np.einsum("ij,ij->i", value, value), 0)
    s = np.minimum(step * np.sqrt(energy_rest / d), max_step * np.sqrt(energy_row / d))
    s = np.maximum(s, magnitude.max(axis=1, initial=0) / 127)
    s = np.maximum(s, np.abs(value).max(axis=1, initial=0) / 60000).astype(np.float32)
    s[s == 0] = 1
    scaled = x * (1 / s)[:, None]
    scaled[r, index] = 0
    return {"codes": np.rint(scaled, out=scaled).astype(np.int8), "scale": s, "outlier_index": index.astype(np.uint16),
            "outlier_value": (value / s[:, None]).astype(np.float16)}


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


SIZES: dict[str, int] = {}  # compressed bytes of the codes at each zstd level (the same every round)


def stage_round(x: np.ndarray, directory: Path) -> dict[str, float]:
    """Seconds of each stage over ``x`` on one thread."""
    import numcodecs
    import torch

    from extract.encode import encode_rows
    from featurestore import get_codec

    from featurestore.writer import ENCODE_BYTES

    codec = get_codec("int8o")
    blocks = np.split(x, range(512, len(x), 512))  # the writer's blocks before issue 15: 512 rows
    rows_now = ENCODE_BYTES // (4 * D)  # now: ~1 MB of rows
    blocks_now = np.split(x, range(rows_now, len(x), rows_now))
    xt = torch.from_numpy(x)
    seconds = {
        "quantise: numpy, before": timed(lambda: [old_int8o_encode(b) for b in blocks]),
        "quantise: numpy, now": timed(lambda: [codec.encode_rows(b) for b in blocks_now]),
        "quantise: torch (CPU)": timed(lambda: [encode_rows(codec, b) for b in xt.split(512)]),
    }
    parts = codec.encode(x)
    chunk = 1024  # tokens per chunk at d = 4096: 4 MB of codes, as the writer plans them
    raw = [np.ascontiguousarray(p[a : a + chunk]).tobytes() for a in range(0, len(x), chunk) for p in parts.values()]
    compressed = []
    zstd3 = numcodecs.Zstd(level=3, checksum=True)
    before = []
    seconds["compress (zstd 3, before)"] = timed(lambda: before.extend(zstd3.encode(r) for r in raw))
    zstd = numcodecs.Zstd(level=codec.zstd_level, checksum=True)
    seconds[f"compress (zstd {codec.zstd_level}, now)"] = timed(lambda: compressed.extend(zstd.encode(r) for r in raw))
    SIZES["zstd 3"], SIZES[f"zstd {codec.zstd_level}"] = sum(map(len, before)), sum(map(len, compressed))
    seconds["checksum (sha256)"] = timed(lambda: [hashlib.sha256(c).hexdigest() for c in compressed])

    def write():
        for i, c in enumerate(compressed):
            (directory / f"c{i}").write_bytes(c)

    seconds["write (page cache)"] = timed(write)
    return seconds


def writer_child(codec_name: str, threads: int, mode: str, tokens: int, layers: int) -> dict:
    """One store written by StoreWriter + BackgroundWriter in this fresh process."""
    import torch
    import zarr

    zarr.config.set({"threading.max_workers": threads})
    torch.set_num_threads(1)
    from extract.encode import to_host
    from featurestore import BackgroundWriter, StoreSpec, StoreWriter, TokenTable, get_codec

    codec = get_codec(codec_name)
    x = rows(tokens, seed=1)
    lengths = [256] * (tokens // 256)
    table = TokenTable.from_examples([np.zeros(n, np.int32) for n in lengths], [np.zeros(n, np.uint8) for n in lengths])
    spec = StoreSpec(range(layers), D, codec, {"bench": "writer"})
    batch = 512
    data = [{k: x[a : a + batch] for k in range(layers)} for a in range(0, tokens, batch)]
    if mode == "device":  # encoded beforehand: what arrives from a GPU (encode_rows gives the numpy bits)
        data = [to_host(codec, {k: torch.from_numpy(v) for k, v in d.items()}).encoded for d in data]
    directory = Path(tempfile.mkdtemp())
    cpu0, start = _cpu(), time.perf_counter()
    with StoreWriter(directory / "s.zarr", spec, table) as writer, BackgroundWriter(writer, threads=threads) as bg:
        for i, d in enumerate(data):
            (bg.write if mode == "host" else bg.write_encoded)(i * batch, d)
    wall, cpu = time.perf_counter() - start, _cpu() - cpu0
    subprocess.run(["rm", "-rf", str(directory)], check=True)
    return {"values": tokens * layers * D, "wall": wall, "cpu": cpu}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def writer_run(codec: str, threads: int, mode: str, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", codec, str(threads), mode, "--tokens", str(args.tokens),
                          "--layers", str(args.layers)], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def layer_count(spec: str, n_layers: int) -> int:
    from extract.plan import parse_layers

    return len(parse_layers(spec, n_layers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per layer in the writer runs")
    parser.add_argument("--layers", type=int, default=4, help="layers in the writer runs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        codec, threads, mode = args.child
        print(json.dumps(writer_child(codec, int(threads), mode, args.tokens, args.layers)))
        return

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} at the start; torch {torch.__version__}, "
          f"numpy {np.__version__}, {args.rounds} interleaved rounds, medians\n")

    x = rows(4096)
    stages: dict[str, list[float]] = {}
    writer: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, s in stage_round(x, Path(tmp)).items():
                stages.setdefault(name, []).append(s)
            for codec in CODECS:
                for mode in ("host", "device"):
                    writer.setdefault((codec, 1, mode), []).append(writer_run(codec, 1, mode, args))
            for mode in ("host", "device"):
                writer.setdefault(("int8o", 2, mode), []).append(writer_run("int8o", 2, mode, args))

    print("1. stages, int8o, one core (d = 4096, 4,096 tokens)")
    print(f"{'stage':<26}{'values/s/core':>15}{'ns/value':>10}")
    ns_stage = {}
    for name, times in stages.items():
        rate = x.size / float(np.median(times))
        ns_stage[name] = 1e9 / rate
        ratio = f"   {ns_stage['quantise: numpy, before'] / ns_stage[name]:.2f}x numpy before" if name.startswith("quantise") else ""
        print(f"{name:<26}{rate / 1e6:>12.0f} M{1e9 / rate:>10.2f}{ratio}")
    from featurestore import get_codec

    level = get_codec("int8o").zstd_level
    shared = ns_stage["checksum (sha256)"] + ns_stage["write (page cache)"]
    before = ns_stage["quantise: numpy, before"] + ns_stage["compress (zstd 3, before)"] + shared
    now = ns_stage[f"compress (zstd {level}, now)"] + shared
    print(f"host CPU per value: the numpy path before issue 15 {before:.2f} ns (quantise + zstd 3 + sha256 + write); "
          f"encoded by torch on the GPU now {now:.2f} ns (zstd {level} + sha256 + write): "
          f"{before / now:.2f}x the values/s per core")
    print(f"the codes at zstd {level}: {SIZES[f'zstd {level}'] / SIZES['zstd 3'] - 1:+.1%} bytes against zstd 3")

    print(f"\n2. the whole writer ({args.layers} layers x {args.tokens:,} tokens x d {D}: "
          f"{args.layers * args.tokens * D / 1e6:.0f} M values per run)")
    print(f"{'codec':<7}{'encoded on':<12}{'threads':>8}{'M values/s':>12}{'per CPU-s':>12}{'ns/value':>10}")
    ns = {"host": {}, "device": {}}
    for (codec, threads, mode), runs in writer.items():
        wall = float(np.median([r["values"] / r["wall"] for r in runs]))
        per_cpu = float(np.median([r["values"] / r["cpu"] for r in runs]))
        if threads == 1:
            ns[mode][codec] = 1e9 / per_cpu
        where = "CPU (numpy)" if mode == "host" else "GPU (given)"
        print(f"{codec:<7}{where:<12}{threads:>8}{wall / 1e6:>12.0f}{per_cpu / 1e6:>12.0f}{1e9 / per_cpu:>10.2f}")

    from extract.estimate import MFU, block_parameters, forward_tokens_per_second

    print(f"\n3. projection: one H200 (989 bf16 TFLOPS x MFU {MFU:.0%}), int8o, host cores the writer needs "
          "(CPU-seconds per value from 2, one thread)")
    print(f"{'model':<22}{'fwd tok/s':>10}{'layers':>10}{'stored':>8}{'M val/s':>9}{'PCIe GB/s':>10}"
          f"{'cores, CPU enc':>15}{'cores, GPU enc':>15}")
    advice = []
    for name, n_layers, d, ff, weights in MODELS:
        speed = forward_tokens_per_second(block_parameters(n_layers, d, ff), "cuda", "H200")
        for spec in ("all", "every:4", "top:3"):
            k = layer_count(spec, n_layers)
            values = speed * k * d
            cores = {mode: values * ns[mode]["int8o"] * 1e-9 for mode in ("host", "device")}
            pcie = values * 4 / 1e9  # float32 rows to the host; GPU encoding moves ~1.06 bytes/value
            print(f"{name:<22}{speed:>10,.0f}{spec:>10}{k:>8}{values / 1e6:>9,.0f}{pcie:>10.1f}"
                  f"{cores['host']:>15.1f}{cores['device']:>15.1f}")
            if cores["device"] > 15:
                advice.append(f"{name} --layers {spec}: the writer needs {cores['device']:.0f} cores even with GPU "
                              "encoding: store fewer layers or use more hosts (torchrun)")
        print(f"{'':<22}(weights: {weights})")
    print("\nWhat extract advises (extract --dry-run shows it for a real run):")
    print("- on CUDA, encode on the GPU (--encode auto does): the host then only compresses, checksums and writes "
          f"({ns['device']['int8o']:.1f} ns/value instead of {ns['host']['int8o']:.1f})")
    for line in advice or ["- every row above stays forward-bound on a 16-core host with GPU encoding"]:
        print(line if line.startswith("-") else f"- {line}")
    print("\nHOST_NS_PER_VALUE for extract/estimate.py:")
    print(json.dumps({m: {c: round(v, 1) for c, v in d.items()} for m, d in ns.items()}))


if __name__ == "__main__":
    main()
