"""Token-range reads straight from a local store's chunk files, for the training hot path.

zarr-python's async codec pipeline spends about 1 ms of Python per array read (tasks, thread hops,
buffer wrappers): for a training batch of 31 layers x 4 codec parts that is ~3x the zstd
decompression itself, and it holds the GIL that the training loop needs. The arrays a store writes
use exactly two codec chains (see ``writer``), both plain Zarr v3:

    sharded:  sharding_indexed(inner chunks: bytes + zstd; index: bytes + crc32c, at the end)
    plain:    bytes + zstd

so a read here is: the shard's index (read once, checksum checked), one ``pread`` per chunk, zstd,
a numpy view. Arrays with any other codec chain are left to Zarr (``layout_of`` is None).

Every chunk read is checked (see ``integrity``): zstd checks the frame's content checksum while it
decompresses, and an array written with frame checksums must have one in every frame (a frame
without it is corrupt); an array written before them is checked against its manifests' sha256,
each object once. A missing chunk file or index entry is an error naming it, never zeros.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import google_crc32c  # zarr's own dependency, used by its crc32c codec
import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

from .errors import CorruptStoreError
from .integrity import Digests, check_digest, corrupt, frame_checked

MISSING = 2**64 - 1  # a sharding index entry of an inner chunk never written


@dataclass(frozen=True)
class ArrayLayout:
    """How one array's token rows map to chunk files."""

    path: str
    dtype: np.dtype
    row_shape: tuple[int, ...]
    outer: int  # tokens per chunk file (a shard, for sharded arrays)
    inner: int  # tokens per compressed chunk
    fill_value: object
    metadata: object
    frame_checksum: bool  # every zstd frame carries its content checksum (stores written since they do)

    @property
    def sharded(self) -> bool:
        return self.inner != self.outer

    def key(self, outer_chunk: int) -> str:
        coords = (outer_chunk,) + (0,) * len(self.row_shape)
        return f"{self.path}/{self.metadata.encode_chunk_key(coords)}"


def layout_of(array: zarr.Array) -> ArrayLayout | None:
    """The layout of an array this module can read, else None."""
    meta = array.metadata
    codecs = list(meta.codecs)
    outer = meta.chunk_grid.chunk_shape
    if any(c != s for c, s in zip(outer[1:], array.shape[1:])):
        return None  # chunked along a row axis: not a token-major store array
    if _is_bytes_zstd(codecs):
        inner, zstd = outer, codecs[1]
    elif len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sharding = codecs[0]
        index = list(sharding.index_codecs)
        if (not _is_bytes_zstd(list(sharding.codecs)) or sharding.index_location != ShardingCodecIndexLocation.end
                or len(index) != 2 or not _is_little_bytes(index[0]) or not isinstance(index[1], Crc32cCodec)
                or tuple(sharding.chunk_shape[1:]) != tuple(outer[1:])):
            return None
        inner, zstd = sharding.chunk_shape, sharding.codecs[1]
    else:
        return None
    dtype = np.dtype(array.dtype).newbyteorder("<")
    return ArrayLayout(array.path, dtype, tuple(array.shape[1:]), outer[0], inner[0], meta.fill_value, meta,
                       bool(zstd.checksum))


def _is_little_bytes(codec) -> bool:
    return isinstance(codec, BytesCodec) and (codec.endian is None or codec.endian.value == "little")


def _is_bytes_zstd(codecs: list) -> bool:
    return len(codecs) == 2 and _is_little_bytes(codecs[0]) and isinstance(codecs[1], ZstdCodec)


class DirectReader:
    """Reads token ranges of a local store's arrays; shard indexes are cached per (array, shard).
    ``digests`` checks the arrays written without frame checksums (each object once)."""

    def __init__(self, root: str | os.PathLike, digests: Digests):
        self.root = Path(root)
        self.digests = digests
        self._zstd = Zstd()
        self._indexes: dict[tuple[str, int], np.ndarray | None] = {}
        self._verified: set[str] = set()

    def read(self, layout: ArrayLayout, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the array, as a new array."""
        out = np.empty((stop - start, *layout.row_shape), layout.dtype)
        step = layout.inner
        for chunk in range(start // step, -(-stop // step)):
            lo, hi = max(start, chunk * step), min(stop, (chunk + 1) * step)
            rows = self._chunk(layout, chunk)
            if rows is None:  # an unwritten shard of an incomplete store, opened on request: zeros, as in Zarr
                out[lo - start : hi - start] = layout.fill_value
            else:
                out[lo - start : hi - start] = rows[lo - chunk * step : hi - chunk * step]
        return out

    def _chunk(self, layout: ArrayLayout, chunk: int) -> np.ndarray | None:
        """The decoded rows of one (inner) chunk, checked (None: not written, in an incomplete store)."""
        per_file = layout.outer // layout.inner
        outer, inner = divmod(chunk, per_file)
        key = layout.key(outer)
        try:
            fd = os.open(self.root / key, os.O_RDONLY)
        except FileNotFoundError:
            if self.digests.complete:
                raise corrupt(self.root, key, "missing") from None
            return None
        try:
            if not layout.frame_checksum and key not in self._verified:
                check_digest(self.root, key, os.pread(fd, os.fstat(fd).st_size, 0), self.digests)
                self._verified.add(key)
            if layout.sharded:
                index = self._index(layout, outer, fd, per_file)
                offset, size = (int(v) for v in index[inner])
                if offset == MISSING and not self.digests.complete:
                    return None
                if offset == MISSING:
                    raise corrupt(self.root, key, f"missing its inner chunk {inner}")
                data = os.pread(fd, size, offset)
            else:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        if layout.frame_checksum and not frame_checked(data):
            raise corrupt(self.root, key, "corrupt (a zstd frame without its checksum)")
        try:
            return np.frombuffer(self._zstd.decode(data), layout.dtype).reshape(layout.inner, *layout.row_shape)
        except (RuntimeError, ValueError) as e:  # zstd: checksum mismatch, bad frame; numpy: wrong size
            raise corrupt(self.root, key, f"corrupt ({str(e).splitlines()[0]})") from None

    def _index(self, layout: ArrayLayout, outer: int, fd: int, per_file: int) -> np.ndarray:
        """(offset, size) per inner chunk, from the shard's trailing index (checksum checked)."""
        key = (layout.path, outer)
        if key not in self._indexes:
            nbytes = per_file * 16
            size = os.fstat(fd).st_size
            tail = os.pread(fd, nbytes + 4, size - nbytes - 4)
            if len(tail) != nbytes + 4 or google_crc32c.value(tail[:nbytes]) != int.from_bytes(tail[nbytes:], "little"):
                raise CorruptStoreError(f"the shard index of {layout.key(outer)} is corrupt (crc32c mismatch) in "
                                        f"{self.root}; run `featurestore verify`, then extract or pull it again")
            self._indexes[key] = np.frombuffer(tail[:nbytes], "<u8").reshape(per_file, 2)
        return self._indexes[key]
