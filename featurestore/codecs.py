"""Codecs: how a block of hidden states (float32, one row per token) becomes stored arrays.

Every codec is *row-independent*: encoding a block equals encoding each token alone. So any token
range can be written, resumed or re-encoded live at evaluation time (train/serve parity) with no
global state such as calibration statistics.

A codec returns named parts; each part is one Zarr array per layer, token-major:
``(n_tokens, hidden)`` for ``width="hidden"``, ``(n_tokens, k)`` for an int width, ``(n_tokens,)``
for ``width=None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from .errors import UserError

Parts = dict[str, np.ndarray]


class CodecError(UserError, ValueError):
    """Bad codec name or parameters, or values a codec cannot store."""


@dataclass(frozen=True)
class Part:
    dtype: str
    width: int | str | None  # "hidden", a fixed int, or None for one value per token

    def row_shape(self, hidden_size: int) -> tuple[int, ...]:
        """The shape of one token's values: (hidden,), (k,) or ()."""
        return () if self.width is None else (hidden_size if self.width == "hidden" else self.width,)


class Codec:
    name: ClassVar[str]
    lossless: ClassVar[bool]
    summary: ClassVar[str]
    max_abs: ClassVar[float] = float("inf")  # largest magnitude the codec can represent
    # The fastest level for every codec: floats gain ~1.10x at any level, and int8 codes compress
    # ~4x faster than at level 3 for about the same size; compression is most of what the host
    # spends per value when a GPU encodes (scripts/bench_writer.py measures both)
    zstd_level: ClassVar[int] = 1

    @property
    def params(self) -> dict:
        return {}

    @property
    def spec(self) -> dict:
        return {"name": self.name, "params": self.params}

    def parts(self) -> dict[str, Part]:
        raise NotImplementedError

    def encode(self, x: np.ndarray) -> Parts:
        raise NotImplementedError

    def encode_rows(self, x: np.ndarray) -> tuple[Parts, np.ndarray, np.ndarray]:
        """(parts, absmax, energy): the encoding of float32 rows ``x`` and, per row, max |x| (float32)
        and sum x^2 (float64, summed in the order of :func:`row_energy`), which the writer checks and
        keeps as the store's stats. The device encoders (``extract.encode``) compute all three
        bit-identically."""
        return self.encode(x), row_absmax(x), row_energy(x * x).astype(np.float64)

    def decode(self, parts: Parts, out: np.ndarray | None = None) -> np.ndarray:
        """Decoded float32 (n, hidden), written into ``out`` when given (a float32 (n, hidden) view,
        e.g. one example's rows of a padded batch: a reader decodes straight into place)."""
        if out is None:
            n = len(next(iter(parts.values())))
            width = next(p for name, p in parts.items() if self.parts()[name].width == "hidden").shape[1]
            out = np.empty((n, width), dtype=np.float32)
        self._decode_into(parts, out)
        return out

    def _decode_into(self, parts: Parts, out: np.ndarray) -> None:
        raise NotImplementedError

    def roundtrip(self, x: np.ndarray) -> np.ndarray:
        """What a reader gets back for ``x``: used for train/serve parity."""
        return self.decode(self.encode(np.ascontiguousarray(x, dtype=np.float32)))

    def __repr__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}:{args}" if args else self.name


class Float32(Codec):
    name, lossless, summary = "fp32", True, "float32, bit-exact"

    def parts(self):
        return {"values": Part("float32", "hidden")}

    def encode(self, x):
        return {"values": np.asarray(x, dtype=np.float32)}

    def _decode_into(self, parts, out):
        np.copyto(out, parts["values"])


class Float16(Codec):
    name, lossless, summary = "fp16", True, "float16; exact for fp16 models, refuses |x| > 65504"
    max_abs = 65504.0

    def parts(self):
        return {"values": Part("float16", "hidden")}

    def encode(self, x):
        return {"values": x.astype(np.float16)}

    def _decode_into(self, parts, out):
        np.copyto(out, parts["values"])


class BFloat16(Codec):
    """bfloat16 bit patterns stored as uint16 (bf16 is not a Zarr dtype); round to nearest even."""

    name, lossless, summary = "bf16", True, "bfloat16 (as uint16); exact for bf16 models, float32 range"

    def parts(self):
        return {"values": Part("uint16", "hidden")}

    def encode(self, x):
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = u + (0x7FFF + ((u >> 16) & 1))
        return {"values": (rounded >> 16).astype(np.uint16)}

    def _decode_into(self, parts, out):
        np.left_shift(parts["values"], 16, out=out.view(np.uint32), dtype=np.uint32)


class Int8(Codec):
    """Per-token absmax int8. The naive baseline: a few massive-activation channels stretch each
    row's scale, so ordinary channels lose most of their precision (~4-5% error on real LLMs)."""

    name, lossless, summary = "int8", False, "per-token absmax int8 (baseline, ~5% error)"

    def parts(self):
        return {"codes": Part("int8", "hidden"), "scale": Part("float32", None)}

    def encode(self, x):
        scale = np.abs(x).max(axis=1) / 127
        scale[scale == 0] = 1
        codes = np.rint(x / scale[:, None]).astype(np.int8)
        return {"codes": codes, "scale": scale.astype(np.float32)}

    def _decode_into(self, parts, out):
        np.multiply(parts["codes"], parts["scale"][:, None], out=out)


class Int8Outlier(Codec):
    """int8 codes plus exact outliers: the default lossy codec.

    Per token, the ``outliers`` largest-magnitude values are kept (channel id + the value as a
    float16 multiple of the step: 2^-11 relative precision, whatever the magnitude). The rest is
    quantised on a uniform grid whose step is ``min(step * rms(rest), max_step * rms(row))``,
    widened if needed so int8 never saturates and outliers fit float16.
    Uniform quantisation error is step/sqrt(12), so every token's relative RMS error is at most
    ``max_step / sqrt(12)`` (2% by default) and much lower where outliers hold most of the
    energy (the massive-activation layers). No per-channel statistics: rows stay independent.
    """

    name, lossless, summary = "int8o", False, "int8 + exact top-k outliers per token (default lossy)"

    def __init__(self, outliers: int = 4, step: float = 0.12, max_step: float = 0.069):
        if outliers < 0 or step <= 0 or max_step <= 0:
            raise CodecError("int8o needs outliers >= 0, step > 0 and max_step > 0")
        self.outliers, self.step, self.max_step = int(outliers), float(step), float(max_step)

    @property
    def params(self):
        return {"outliers": self.outliers, "step": self.step, "max_step": self.max_step}

    def parts(self):
        return {
            "codes": Part("int8", "hidden"),
            "scale": Part("float32", None),
            "outlier_index": Part("uint16", self.outliers),
            "outlier_value": Part("float16", self.outliers),
        }

    def encode(self, x):
        return self.encode_rows(x)[0]

    def encode_rows(self, x):
        # Written for few passes over x: the extraction writer runs it beside the backbone. Every
        # operation is an exactly rounded one in a fixed order, so extract.encode's torch twin (on
        # any device) gives the same bits.
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        magnitude = np.abs(x)
        absmax = row_absmax(x) if self.outliers == 0 else None
        index = top_abs_indices(magnitude, self.outliers)  # marks the outliers -1 in `magnitude`
        rows = np.arange(n)[:, None]
        value = x[rows, index]
        if absmax is None:
            absmax = np.abs(value[:, 0])  # the first outlier is the row's largest magnitude
        squares = x * x
        squares[rows, index] = 0
        energy_rest = row_energy(squares).astype(np.float64)  # no cancellation against massive outliers
        energy_row = energy_rest.copy()
        for j in range(self.outliers):
            v = value[:, j].astype(np.float64)
            energy_row += v * v  # exact products (float32 squares fit float64), added in column order
        step = np.minimum(self.step * np.sqrt(energy_rest / d), self.max_step * np.sqrt(energy_row / d))
        step = np.maximum(step, magnitude.max(axis=1, initial=0) / 127)  # int8 never saturates
        step = np.maximum(step, np.abs(value).max(axis=1, initial=0) / 60000)  # outliers fit float16
        step = step.astype(np.float32)
        step[step == 0] = 1
        scaled = x * (1 / step)[:, None]
        scaled[rows, index] = 0  # outlier slots: decode overwrites them
        parts = {
            "codes": np.rint(scaled, out=scaled).astype(np.int8),
            "scale": step,
            "outlier_index": index.astype(np.uint16),
            "outlier_value": (value / step[:, None]).astype(np.float16),
        }
        return parts, absmax, energy_row

    def _decode_into(self, parts, out):
        scale = parts["scale"][:, None]
        np.multiply(parts["codes"], scale, out=out)
        if self.outliers:
            rows = np.arange(len(out))[:, None]
            out[rows, parts["outlier_index"].astype(np.intp)] = np.multiply(parts["outlier_value"], scale, dtype=np.float32)


def row_absmax(x: np.ndarray) -> np.ndarray:
    """max |x| per row (float32; +0.0 for a row of zeros), without an |x| temporary."""
    if x.shape[1] == 0:
        return np.zeros(len(x), np.float32)
    return np.maximum(x.max(axis=1), -x.min(axis=1)) + np.float32(0)


def row_energy(squares: np.ndarray) -> np.ndarray:
    """Per-row sums of ``squares`` (float32, (n, d), overwritten) in one fixed order: the upper part
    of the row is added onto the lower part until one column is left. Every add is an exactly
    rounded float32 add, so numpy and torch, on any device, give the same bits (a library's own
    reduction order is not specified, and differs between them)."""
    width = squares.shape[1]
    while width > 1:
        half = (width + 1) // 2
        squares[:, : width - half] += squares[:, half:width]
        width = half
    return squares[:, 0].copy() if width else np.zeros(len(squares), squares.dtype)


def top_abs_indices(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Column ids of the k largest values per row of ``magnitude`` (|x|), which are overwritten
    with -1. k passes of argmax: ~10x faster than argpartition for small k, and ties resolve
    deterministically (lowest column first)."""
    rows = np.arange(len(magnitude))
    index = np.empty((len(magnitude), k), dtype=np.intp)
    for j in range(k):
        index[:, j] = magnitude.argmax(axis=1)
        magnitude[rows, index[:, j]] = -1
    return index


CODECS: dict[str, type[Codec]] = {c.name: c for c in (Float32, Float16, BFloat16, Int8, Int8Outlier)}
DEFAULT_LOSSY = "int8o"


def get_codec(spec: str | dict | Codec) -> Codec:
    """A codec from ``"name"``, ``"name:key=value,..."``, ``{"name", "params"}`` or an instance."""
    if isinstance(spec, Codec):
        return spec
    if isinstance(spec, dict):
        name, params = spec["name"], dict(spec.get("params", {}))
    else:
        name, _, args = spec.partition(":")
        params = dict(_parse_param(kv) for kv in args.split(",") if kv)
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; valid codecs: {', '.join(CODECS)}")
    try:
        return CODECS[name](**params)
    except TypeError:
        raise CodecError(f"bad parameters {params} for codec {name!r}") from None


def _parse_param(kv: str) -> tuple[str, float | int]:
    key, _, value = kv.partition("=")
    try:
        number = float(value)
    except ValueError:
        raise CodecError(f"codec parameter {kv!r} is not key=number") from None
    return key.strip(), int(number) if number.is_integer() and "." not in value else number
