"""Encoding hidden states where the backbone computed them: torch twins of ``featurestore.codecs``.

On a GPU the numpy codecs would have to receive every float32 hidden value over PCIe and spend
~4 ns of host CPU on each (an 8B model forwards ~135,000 values per token). Encoding on the device
leaves the host only the codes (~1/4 of the bytes) to compress, checksum and write.

Each encoder gives exactly the numpy codec's bits, on any device: every step is one exactly
rounded IEEE operation (or a max / argmax, which are exact), in the same order as the numpy code,
and the row sums use ``featurestore.codecs.row_energy``'s fixed order instead of a library
reduction. ``tests/extract/test_encode.py`` checks the bits on CPU torch; the device check runs
them on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from featurestore.codecs import Codec


def row_absmax(x: Tensor) -> Tensor:
    """max |x| per row, float32 (``featurestore.codecs.row_absmax``)."""
    if x.shape[1] == 0:
        return x.new_zeros(len(x))
    return torch.maximum(x.amax(dim=1), -x.amin(dim=1)) + 0.0


def row_energy(squares: Tensor) -> Tensor:
    """Per-row sums in ``featurestore.codecs.row_energy``'s fixed order (``squares`` is overwritten)."""
    width = squares.shape[1]
    while width > 1:
        half = (width + 1) // 2
        squares[:, : width - half] += squares[:, half:width]
        width = half
    return squares[:, 0].clone() if width else squares.new_zeros(len(squares))


def top_abs_indices(magnitude: Tensor, k: int) -> Tensor:
    """``featurestore.codecs.top_abs_indices``: k passes of argmax (torch.argmax returns the first
    maximal index, as numpy's), the chosen entries of ``magnitude`` overwritten with -1."""
    index = torch.empty((len(magnitude), k), dtype=torch.int64, device=magnitude.device)
    for j in range(k):
        index[:, j] = magnitude.argmax(dim=1)
        magnitude.scatter_(1, index[:, j : j + 1], -1.0)
    return index


def _default_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    return row_absmax(x), row_energy(x * x).double()


def _fp32(codec, x):
    return {"values": x}, *_default_stats(x)


def _fp16(codec, x):
    return {"values": x.half()}, *_default_stats(x)


def _bf16(codec, x):
    u = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # the float32 bits as uint32
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFFFFFF) >> 16  # uint32 wrap-around, as numpy's
    return {"values": (rounded - ((rounded >> 15) << 16)).to(torch.int16)}, *_default_stats(x)  # uint16 bits


def _int8(codec, x):
    scale = x.abs().amax(dim=1) / 127
    scale[scale == 0] = 1
    codes = torch.round(x / scale[:, None]).to(torch.int8)
    return {"codes": codes, "scale": scale}, *_default_stats(x)


def _int8o(codec, x):
    n, d = x.shape
    k = codec.outliers
    magnitude = x.abs()
    absmax = row_absmax(x) if k == 0 else None
    index = top_abs_indices(magnitude, k)
    value = x.gather(1, index)
    if absmax is None:
        absmax = value[:, 0].abs()
    squares = x * x
    squares.scatter_(1, index, 0.0)
    energy_rest = row_energy(squares).double()
    energy_row = energy_rest.clone()
    for j in range(k):
        v = value[:, j].double()
        energy_row += v * v
    step = torch.minimum(codec.step * torch.sqrt(energy_rest / d), codec.max_step * torch.sqrt(energy_row / d))
    step = torch.maximum(step, (_max1(magnitude) / 127).double())  # float32 quotients, as numpy's
    step = torch.maximum(step, (_max1(value.abs()) / 60000).double())
    step = step.float()
    step[step == 0] = 1
    scaled = x * (1 / step)[:, None]
    scaled.scatter_(1, index, 0.0)
    parts = {
        "codes": torch.round(scaled).to(torch.int8),
        "scale": step,
        "outlier_index": index.to(torch.int16),  # < 65536 columns; the uint16 bits
        "outlier_value": (value / step[:, None]).half(),
    }
    return parts, absmax, energy_row


def _max1(x: Tensor) -> Tensor:
    """``x.max(axis=1, initial=0)``."""
    return x.amax(dim=1).clamp_min(0) if x.shape[1] else x.new_zeros(len(x))


ENCODERS: dict[str, Callable] = {"fp32": _fp32, "fp16": _fp16, "bf16": _bf16, "int8": _int8, "int8o": _int8o}

# numpy dtypes of parts the torch tensors carry under another name (torch has no full uint16)
_HOST_VIEWS = {"uint16": np.uint16}


def encode_rows(codec: Codec, x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """(parts, absmax, energy) of float32 rows ``x`` (n, d) on ``x``'s device: what
    ``codec.encode_rows`` gives for ``x.numpy()``, as tensors (a uint16 part as int16 bits)."""
    x = x.float().contiguous()
    return ENCODERS[codec.name](codec, x)


@dataclass
class HostRows:
    """One batch's encoded rows on their way to the host: pinned buffers filled by non-blocking
    copies. ``wait`` blocks until the copies are done (the writer thread calls it), then the numpy
    views are valid."""

    encoded: dict[int, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]
    event: torch.cuda.Event | None

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


def to_host(codec: Codec, rows: dict[int, Tensor]) -> HostRows:
    """Encodes each layer's rows on their device and starts copying the codes to (pinned) host
    memory. On CUDA the copies are asynchronous: call ``wait`` before reading them; on CPU the
    result is ready at once."""
    cuda = any(x.is_cuda for x in rows.values())
    encoded = {}
    for k, x in rows.items():
        parts, absmax, energy = encode_rows(codec, x)
        tensors = {**parts, "__absmax": absmax, "__energy": energy}
        host = {}
        for name, t in tensors.items():
            if cuda:
                buffer = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buffer.copy_(t, non_blocking=True)
            else:
                buffer = t
            array = buffer.numpy()
            part = codec.parts().get(name)
            if part is not None and part.dtype in _HOST_VIEWS:
                array = array.view(_HOST_VIEWS[part.dtype])
            host[name] = array
        absmax, energy = host.pop("__absmax"), host.pop("__energy")
        encoded[k] = (host, absmax, energy)
    event = None
    if cuda:
        event = torch.cuda.Event()
        event.record()
    return HostRows(encoded, event)
