"""Hidden states kept in the store's encoding until the side network reads them.

An int8o layer is ~4x smaller than its float32 decoding, so every batch held (read ahead, in
training, saved for backward) costs ~4x less memory and, on a GPU, ~4x less host-to-device traffic.
The side network decodes a layer where it uses it, on the device, and again in backward instead of
keeping it (``model.NormLinear``). The decoders are torch twins of ``featurestore.codecs``' decode,
bit-identical in float32 (one exact conversion and one float32 product per value).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from extract.encode import encode_rows
from featurestore.codecs import Codec


def _int8(parts: dict[str, Tensor]) -> Tensor:
    return parts["codes"] * parts["scale"][..., None]  # one float32 output, no float copy of the codes


def _int8o(parts: dict[str, Tensor]) -> Tensor:
    scale = parts["scale"][..., None]
    x = parts["codes"] * scale
    return x.scatter_(-1, parts["outlier_index"].long(), parts["outlier_value"].float() * scale)


def _fp16(parts: dict[str, Tensor]) -> Tensor:
    return parts["values"].float()


def _bf16(parts: dict[str, Tensor]) -> Tensor:
    return (parts["values"].to(torch.int32) << 16).view(torch.float32)


DECODERS = {"int8": _int8, "int8o": _int8o, "fp16": _fp16, "bf16": _bf16}  # fp32 has nothing to gain


@dataclass
class Encoded:
    """One layer's hidden states (B, T, d) as codec parts, e.g. int8 codes, scales and outliers."""

    codec: str
    parts: dict[str, Tensor]

    def decode(self) -> Tensor:
        return DECODERS[self.codec](self.parts)

    def decoder(self):
        """A function of the part tensors (in ``parts`` order) that decodes them, for autograd
        functions that save the parts rather than the decoded layer."""
        return partial(_decode, self.codec, tuple(self.parts))

    def to(self, device: torch.device, non_blocking: bool = False) -> Encoded:
        return Encoded(self.codec, {k: p.to(device, non_blocking=non_blocking) for k, p in self.parts.items()})

    def pin_memory(self) -> Encoded:
        return Encoded(self.codec, {k: p.pin_memory() for k, p in self.parts.items()})


def _decode(codec: str, names: tuple[str, ...], *tensors: Tensor) -> Tensor:
    return DECODERS[codec](dict(zip(names, tensors)))


def decoded(h: Tensor | Encoded) -> Tensor:
    return h.decode() if isinstance(h, Encoded) else h


def roundtrip(codec: Codec, rows: Tensor) -> Tensor:
    """float32 rows (n, d) encoded and decoded where they are, with the store's bits: what
    ``codec.roundtrip`` gives on the host, without the trip there (generation on a GPU)."""
    if codec.name not in DECODERS:  # fp32: stored as is
        return rows.float()
    parts, _, _ = encode_rows(codec, rows)
    return Encoded(codec.name, parts).decode()
