"""What an extraction will cost, before it runs: tokens, store size, time, and whether the writer
(not the forward) would be the bottleneck. ``extract --dry-run`` prints it; ``extract`` shows it in
its progress bar and warns before it starts when the writer would be the bottleneck; ``scripts/bench_writer.py`` projects the same arithmetic to 1B-70B models.

The constants are measurements (say where) or stated assumptions; an estimate is as good as they are:

- forward speed on a GPU: model FLOPs (2 x parameters per token) at ``MFU`` of the GPU's bf16 peak;
  on a CPU, FLOPs at ``CPU_GFLOPS_PER_CORE`` (SmolLM2-135M fp32 ran at 462 tokens/s on this
  2-core machine: 2 x 135e6 x 462 / 2 = 62 GFLOP/s per core);
- store bytes: the hidden states at ``featurestore.codecs``' measured bytes per value (SmolLM2
  hidden states, ``scripts/bench_codecs.py``), the frozen head (float32, zstd) at what a float32
  copy of the weights compresses to, and the token layout and metadata (see the constants);
- the writer's host CPU per stored value, by where the codec runs (``scripts/bench_writer.py``,
  one core of this machine, median of interleaved rounds).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from featurestore import get_codec
from featurestore.inventory import Footprint, human_bytes

MFU = 0.40  # forward FLOPs / peak on a GPU: prefill-like batches of ~4k tokens (an assumption)
CPU_GFLOPS_PER_CORE = 60.0

# bf16 dense peak TFLOPS (vendor data sheets), matched against torch.cuda.get_device_name()
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0,
                   "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}
DEFAULT_GPU_TFLOPS = 100.0

# Store bytes per hidden value on disk (bench_codecs.py, SmolLM2-135M: bytes/tok/layer / 576).
BYTES_PER_VALUE = {"fp32": 2089 / 576, "fp16": 1045 / 576, "bf16": 890 / 576, "int8": 347 / 576, "int8o": 381 / 576}

# Bytes per value of the stored head (V x d float32, zstd), by the dtype the backbone's weights are
# stored in: a float32 copy of bf16 weights has 16 zero bits a value. Measured with numcodecs' Zstd(3):
# SmolLM2-135M's and Gemma 3 270M's embeddings (their heads; dequantised GGUF) 0.668 and 0.671 of
# float32; normal(0, 0.02) values 0.93 (float32), 0.59 (from float16), 0.46 (from bfloat16).
HEAD_BYTES_PER_VALUE = {"gguf": 4 * 0.67, "float32": 4 * 0.93, "float16": 4 * 0.59, "bfloat16": 4 * 0.46}
# Bytes per weight of the stored top blocks (extract.backbones.blocks: float16 where it is exact, which
# zstd hardly shrinks; SmolLM2-135M's GGUF: 2.0), else float32 as for the head.
BLOCK_BYTES_PER_VALUE = {"gguf": 2.0, "float16": 2.0, "float32": 4 * 0.93, "bfloat16": 4 * 0.46}
# The rest: input ids (int32), loss mask, examples' metadata and the shard manifests per token, and a
# zarr.json per array (measured: 239 KB in the 81k-token, 132-array SmolLM2 arith store).
REST_BYTES_PER_TOKEN = 2.5
REST_BYTES_PER_ARRAY = 400

# Host CPU nanoseconds per stored value of the whole writer (encode where given, zstd, sha256, write):
# scripts/bench_writer.py on this machine's CPU (2 shared cores, loaded), d = 4096, one thread. "host": the numpy codec on
# the CPU (a CPU run, or --encode host); "device": the codes arrive encoded (--encode device/auto on
# CUDA), so the host only compresses, checksums and writes them.
HOST_NS_PER_VALUE = {
    "host": {"fp32": 17.9, "fp16": 9.3, "bf16": 10.3, "int8": 4.7, "int8o": 5.3},
    "device": {"fp32": 11.7, "fp16": 6.6, "bf16": 7.5, "int8": 3.0, "int8o": 3.2},
}


def block_parameters(n_layers: int, hidden_size: int, intermediate_size: int | None) -> float:
    """Parameters of the transformer blocks (attention 4 d^2, a gated MLP 3 d f): what a token's
    forward multiplies through (the LM head does not run for hidden states)."""
    ff = intermediate_size or 4 * hidden_size
    return n_layers * (4 * hidden_size**2 + 3 * hidden_size * ff)


def forward_tokens_per_second(parameters: float, device: str, gpu_name: str = "", cores: int | None = None) -> float:
    """Projected forward speed: 2 FLOPs per parameter per token at MFU of the GPU's peak, or at
    CPU_GFLOPS_PER_CORE per core."""
    if device.startswith("cuda"):
        peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in gpu_name), DEFAULT_GPU_TFLOPS)
        return MFU * peak * 1e12 / (2 * parameters)
    return (cores or os.cpu_count() or 1) * CPU_GFLOPS_PER_CORE * 1e9 / (2 * parameters)


def writer_cores_needed(tokens_per_second: float, values_per_token: int, codec: str, encode_on: str) -> float:
    """Host cores the writer needs to keep up with a forward of ``tokens_per_second``."""
    return tokens_per_second * values_per_token * HOST_NS_PER_VALUE[encode_on][codec] * 1e-9


@dataclass(frozen=True)
class Estimate:
    n_tokens: int
    n_layers_stored: int
    hidden_size: int
    codec: str
    footprint: Footprint  # the store's bytes, as featurestore info will count them
    device: str
    encode_on: str  # "host" or "device"
    forward_tokens_per_s: float
    writer_cores: float  # host cores the writer needs at that speed
    cores: int  # host cores there are for it

    @property
    def values_per_token(self) -> int:
        return self.n_layers_stored * self.hidden_size

    @property
    def store_bytes(self) -> float:
        return self.footprint.total

    @property
    def writer_bound(self) -> bool:
        return self.device.startswith("cuda") and self.writer_cores > self.cores

    @property
    def seconds(self) -> float:
        forward = self.n_tokens / self.forward_tokens_per_s
        if self.device.startswith("cuda"):  # the writer overlaps the forward on its own cores
            return forward * max(1.0, self.writer_cores / self.cores)
        return forward * (1 + self.writer_cores / self.cores)  # on a CPU the two share the cores

    def summary(self) -> str:
        """One line for a progress bar: time and store size."""
        return f"~{_duration(self.seconds)}, {human_bytes(self.store_bytes)}"

    def lines(self) -> list[str]:
        lines = [
            f"tokens       {self.n_tokens:,}",
            f"store        {self.footprint.size()}",
            f"bytes/token  {self.footprint.per_token(self.n_tokens, self.n_layers_stored)} "
            f"({self.codec}: ~{BYTES_PER_VALUE[self.codec]:.2f} bytes/value)",
            f"time         ~{_duration(self.seconds)} on {self.device} (forward ~{self.forward_tokens_per_s:,.0f} "
            f"tokens/s projected; writer needs {self.writer_cores:.1f} of {self.cores} cores, encoding on the "
            f"{self.encode_on})",
        ]
        if self.writer_bound:
            advice = "" if self.encode_on == "device" else "encode on the GPU (--encode auto), or "
            lines.append(f"warning: the writer, not the forward, would be the bottleneck ({self.writer_cores:.0f} cores "
                         f"needed, {self.cores} here); {advice}store fewer layers (--layers every:4, top:D) or "
                         "a smaller codec")
        return lines


def footprint(n_tokens: int, info: dict, layers: tuple[int, ...], codec: str, stored_as: str = "float32",
              n_parts: int = 1, top_blocks: int = 0) -> Footprint:
    """The bytes a store of ``n_tokens`` tokens will take: its hidden states, its frozen head (a
    model whose ``info`` has no vocab_size counts none), the rest (``n_parts`` arrays per layer),
    and ``top_blocks`` of the backbone's blocks (counted without grouped key/value heads: a little over)."""
    d = info["hidden_size"]
    hidden = n_tokens * len(layers) * d * BYTES_PER_VALUE[codec]
    head = info.get("vocab_size", 0) * d * HEAD_BYTES_PER_VALUE.get(stored_as, 4.0)
    blocks = block_parameters(top_blocks, d, info.get("intermediate_size")) * BLOCK_BYTES_PER_VALUE.get(stored_as, 4.0)
    arrays = len(layers) * n_parts + 8 + 9 * top_blocks  # the token layout, examples, the head, the groups, blocks
    return Footprint(hidden, head, n_tokens * REST_BYTES_PER_TOKEN + arrays * REST_BYTES_PER_ARRAY, blocks)


def estimate(n_tokens: int, info: dict, layers: tuple[int, ...], codec: str, device: str, encode: str = "auto",
             gpu_name: str | None = None, cores: int | None = None, stored_as: str = "float32",
             top_blocks: int = 0) -> Estimate:
    """The estimate of an extraction of ``n_tokens`` tokens by the backbone ``info`` describes, whose
    weights are stored as ``stored_as`` (see HEAD_BYTES_PER_VALUE), keeping ``top_blocks`` of its blocks."""
    cuda = device.startswith("cuda")
    if cuda and gpu_name is None:
        import torch

        gpu_name = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else ""
    encode_on = "device" if encode == "device" or encode == "auto" and cuda else "host"
    cores = cores or os.cpu_count() or 1
    params = block_parameters(info["n_layers"], info["hidden_size"], info.get("intermediate_size"))
    speed = forward_tokens_per_second(params, device, gpu_name or "", cores)
    values = len(layers) * info["hidden_size"]
    writer_cores = writer_cores_needed(speed, values, codec, encode_on)
    size = footprint(n_tokens, info, layers, codec, stored_as, len(get_codec(codec).parts()), top_blocks)
    return Estimate(n_tokens, len(layers), info["hidden_size"], codec, size, device, encode_on, speed, writer_cores,
                    max(1, cores - 1) if cuda else cores)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
