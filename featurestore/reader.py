"""Reading a feature store: by path or fsspec URL, only the layers asked for."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import zarr
from zarr.core.sync import sync

from . import layout as L
from .codecs import Codec, get_codec
from .layout import Geometry
from .inventory import array_path
from .storage import open_store, read_manifest
from .writer import MARKER, StoreError


@dataclass
class Tokens:
    """A run of tokens: ids, loss mask, decoded hidden states per requested layer, and the
    example boundaries within the run (``offsets[0] == 0``)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray
    hidden: dict[int, np.ndarray]
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


class FeatureStore:
    """A complete (or, if asked, incomplete) feature store opened for reading::

        store = FeatureStore.open("runs/smollm2-arith.zarr")
        ex = store.example(3, layers=[0, 30])      # ids, mask, {layer: (n, hidden) float32}
        block = store.examples(range(100, 164), layers=[30])

    Only the arrays of requested layers are opened and read.
    """

    def __init__(self, group: zarr.Group, location: str):
        self.group, self.location = group, location
        self.attrs = dict(group.attrs)
        self.codec: Codec = get_codec(self.attrs["codec"])
        self.layers: tuple[int, ...] = tuple(self.attrs["layers"])
        self.hidden_size: int = self.attrs["hidden_size"]
        self.geometry = Geometry(self.attrs["n_tokens"], self.attrs["chunk_tokens"], self.attrs["shard_tokens"])
        self._arrays: dict[str, zarr.Array] = {}

    @classmethod
    def open(cls, location, *, allow_incomplete: bool = False, cache_dir: str | None = None) -> FeatureStore:
        """Opens a store (a path or fsspec URL); refuses unknown format versions and, unless asked,
        incomplete stores. A URL is read through a local cache (``cache_dir``, default
        ``~/.cache/ladder-cache/remote``; ``"off"`` for none), so a second pass reads local disk."""
        try:
            store = open_store(location, cache_dir=cache_dir)
            group = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise StoreError(f"no feature store at {location}") from None
        except (OSError, ImportError, ValueError) as e:  # unreachable host, missing s3fs, unknown protocol
            raise StoreError(f"cannot read {location}: {str(e).splitlines()[0]}") from None
        attrs = group.attrs
        if attrs.get("format") != MARKER:
            raise StoreError(f"{location} is a Zarr group but not a feature store")
        version = attrs.get("format_version")
        if version != L.FORMAT_VERSION:
            raise StoreError(
                f"{location} has format version {version}; this version of ladder-cache reads "
                f"version {L.FORMAT_VERSION} only (upgrade ladder-cache or re-extract)"
            )
        if not attrs.get("complete") and not allow_incomplete:
            raise StoreError(
                f"{location} is incomplete (its extraction was interrupted or is still running); "
                "finish it with `extract --resume`, or open it with allow_incomplete=True"
            )
        return cls(group, str(location))

    # -- description ------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def n_examples(self) -> int:
        return self.attrs["n_examples"]

    @property
    def n_tokens(self) -> int:
        return self.attrs["n_tokens"]

    @cached_property
    def offsets(self) -> np.ndarray:
        return self._array(L.OFFSETS)[:]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def meta(self) -> list[dict]:
        return [json.loads(s) for s in self._array(L.META)[:]]

    def head(self) -> tuple[dict[str, np.ndarray], dict]:
        """The frozen head weights and their config. The weights are named by the layout manifest,
        not by listing the group (which plain HTTP servers cannot do)."""
        checksums = read_manifest(self.group.store, L.LAYOUT_MANIFEST)["checksums"]
        paths = sorted({array_path(key) for key in checksums if key.startswith(f"{L.HEAD}/")})
        weights = {path.split("/", 1)[1]: self._array(path)[...] for path in paths}
        return weights, dict(self.group[L.HEAD].attrs)

    # -- reading ----------------------------------------------------------------------------

    def _array(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            self._arrays[path] = self.group[path]
        return self._arrays[path]

    def _layers(self, layers) -> tuple[int, ...]:
        layers = self.layers if layers is None else tuple(layers)
        unknown = sorted(set(layers) - set(self.layers))
        if unknown:
            raise KeyError(f"layers {unknown} are not in this store (it has {list(self.layers)})")
        return layers

    def _read(self, paths: list[str], start: int, stop: int) -> list[np.ndarray]:
        """Token rows [start, stop) of several arrays in one request: Zarr fetches and decompresses
        them concurrently instead of one blocking round-trip per array."""

        arrays = [self._array(p)._async_array for p in paths]  # opened outside the event loop

        async def gather():
            return await asyncio.gather(*(a.getitem(slice(start, stop)) for a in arrays))

        return sync(gather())

    def read_layer(self, layer: int, start: int, stop: int) -> np.ndarray:
        """Decoded hidden states (float32, (stop - start, hidden)) of one layer for a token range."""
        return self.tokens(start, stop, [layer]).hidden[layer]

    def tokens(self, start: int, stop: int, layers=None) -> Tokens:
        """Tokens [start, stop) with the requested layers (all by default)."""
        layers, parts = self._layers(layers), list(self.codec.parts())
        paths = [L.INPUT_IDS, L.LOSS_MASK] + [L.layer_path(k, name) for k in layers for name in parts]
        input_ids, loss_mask, *arrays = self._read(paths, start, stop)
        per_layer = [dict(zip(parts, arrays[i : i + len(parts)])) for i in range(0, len(arrays), len(parts))]
        return Tokens(input_ids, loss_mask, {k: self.codec.decode(p) for k, p in zip(layers, per_layer)},
                      offsets=np.array([0, stop - start]))

    def example(self, i: int, layers=None) -> Tokens:
        if not 0 <= i < self.n_examples:
            raise IndexError(f"example {i} out of range (store has {self.n_examples})")
        return self.tokens(int(self.offsets[i]), int(self.offsets[i + 1]), layers)

    def examples(self, indices, layers=None) -> Tokens:
        """Examples concatenated in the given order. When they lie close together (a block of a
        length-sorted store, minus a few held-out examples) the covering token range is read in
        one request per array and the rows gathered, rather than one request per run."""
        indices = np.asarray(list(indices), dtype=np.int64)
        if len(indices) == 0:
            raise ValueError("no examples requested")
        lengths = self.lengths[indices]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        lo, hi = int(self.offsets[indices.min()]), int(self.offsets[indices.max() + 1])
        if hi - lo <= 2 * offsets[-1]:
            block = self.tokens(lo, hi, layers)
            rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices]) - lo
            if len(rows) == hi - lo and (rows == np.arange(hi - lo)).all():
                block.offsets = offsets
                return block
            return Tokens(block.input_ids[rows], block.loss_mask[rows], {k: h[rows] for k, h in block.hidden.items()}, offsets)
        parts = [self.examples(range(a, b), layers) for a, b in _contiguous_runs(indices)]
        return Tokens(
            input_ids=np.concatenate([p.input_ids for p in parts]),
            loss_mask=np.concatenate([p.loss_mask for p in parts]),
            hidden={k: np.concatenate([p.hidden[k] for p in parts]) for k in parts[0].hidden},
            offsets=offsets,
        )

    def __repr__(self) -> str:
        return f"FeatureStore({self.location!r}, {self.n_examples} examples, {self.n_tokens} tokens)"


def _contiguous_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """[(first, last + 1)] for each run of consecutive indices."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(indices, breaks)]
