"""Reading a feature store: by path or fsspec URL, only the layers asked for."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.storage import LocalStore

from . import layout as L
from .codecs import Codec, get_codec
from .direct import ArrayLayout, DirectReader, layout_of
from .errors import CorruptStoreError, MissingLayerError, StoreError
from .integrity import INTEGRITY, CheckedStore, check_document, check_manifests, check_root, corrupt, offsets_problem
from .inventory import array_path
from .layout import Geometry
from .remote import RemoteStore
from .storage import open_store, read_manifest
from .writer import MARKER


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


@dataclass
class Padded:
    """Examples right-padded to a common length T: ids (int64) and loss mask (bool) (B, T), and per
    layer the decoded hidden states (B, T, hidden) or the codec's parts; zeros past each example's
    length (so padding decodes to zeros)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray
    hidden: dict[int, np.ndarray] | dict[int, dict[str, np.ndarray]]
    lengths: np.ndarray


class FeatureStore:
    """A complete (or, if asked, incomplete) feature store opened for reading::

        store = FeatureStore.open("runs/smollm2-arith.zarr")
        ex = store.example(3, layers=[0, 30])      # ids, mask, {layer: (n, hidden) float32}
        block = store.examples(range(100, 164), layers=[30])

    Only the arrays of requested layers are opened and read, and everything read is checked
    (``integrity``): a damaged store raises CorruptStoreError naming the bad object.
    """

    def __init__(self, group: zarr.Group, location: str):
        if not isinstance(group.store, CheckedStore):
            raw = group.store
            checked = CheckedStore(raw, location, by_manifest=isinstance(raw, RemoteStore) or _unrecorded(raw),
                                   complete=bool(group.attrs.get("complete")))
            group = zarr.open_group(checked, mode="r", zarr_format=3, use_consolidated=False)
        self.group, self.location = group, location
        self.attrs = dict(group.attrs)
        check_root(self.attrs, location)
        if self.attrs.get("complete"):  # an incomplete store's manifests are still being written
            check_manifests(group.store, self.attrs, location)
        self.codec: Codec = get_codec(self.attrs["codec"])
        self.layers: tuple[int, ...] = tuple(self.attrs["layers"])
        self.hidden_size: int = self.attrs["hidden_size"]
        self.geometry = Geometry(self.attrs["n_tokens"], self.attrs["chunk_tokens"], self.attrs["shard_tokens"])
        self._arrays: dict[str, zarr.Array] = {}
        self._layouts: dict[str, ArrayLayout | None] = {}
        checked = group.store  # a CheckedStore (see open)
        local = isinstance(checked._store, LocalStore)
        self._direct = DirectReader(checked._store.root, checked.digests) if local else None  # others: through Zarr

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
        offsets = self._whole(L.OFFSETS)
        if problem := offsets_problem(offsets, self.n_examples, self.n_tokens):
            raise corrupt(self.location, L.OFFSETS, f"inconsistent (it {problem})")
        return offsets

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def meta(self) -> list[dict]:
        meta = self._whole(L.META)
        if meta.shape != (self.n_examples,):
            raise corrupt(self.location, L.META, f"inconsistent ({meta.size} entries for {self.n_examples} examples)")
        try:
            return [json.loads(s) for s in meta]
        except ValueError:
            raise corrupt(self.location, L.META, "corrupt (an entry is not JSON)") from None

    def head(self) -> tuple[dict[str, np.ndarray], dict]:
        """The frozen head weights and their config (their meaning: :mod:`featurestore.head`)."""
        return self._frozen(L.HEAD)

    def top_blocks(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """The backbone's top blocks and their config, or None when the store holds none (see
        extract.backbones.blocks)."""
        return self._frozen(L.BLOCKS) if self.attrs.get("top_blocks") else None

    def _frozen(self, group: str) -> tuple[dict[str, np.ndarray], dict]:
        """The weights of a group written at creation, and its attributes. The weights are named by the
        layout manifest, not by listing the group (which plain HTTP servers cannot do)."""
        check_document(self.group.store, self.attrs, f"{L.LAYOUT_MANIFEST}/zarr.json", self.location)
        checksums = (read_manifest(self.group.store, L.LAYOUT_MANIFEST) or {}).get("checksums")
        if not isinstance(checksums, dict):
            raise corrupt(self.location, f"{L.LAYOUT_MANIFEST}/zarr.json", "missing or unreadable")
        paths = sorted({array_path(key) for key in checksums if key.startswith(f"{group}/")})
        weights = {path.split("/", 1)[1]: self._whole(path) for path in paths}
        check_document(self.group.store, self.attrs, f"{group}/zarr.json", self.location)
        try:
            return weights, dict(self.group[group].attrs)
        except KeyError:
            raise corrupt(self.location, f"{group}/zarr.json", "missing") from None

    # -- reading ----------------------------------------------------------------------------

    def _array(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            check_document(self.group.store, self.attrs, f"{path}/zarr.json", self.location)
            try:
                self._arrays[path] = self.group[path]
            except KeyError:
                raise corrupt(self.location, f"{path}/zarr.json", "missing") from None
        return self._arrays[path]

    def _whole(self, path: str) -> np.ndarray:
        """A whole small array (offsets, meta, a head weight), read through Zarr, checked."""
        array = self._array(path)
        with _decoding(self.location, path):
            return array[...]

    def _layers(self, layers) -> tuple[int, ...]:
        layers = self.layers if layers is None else tuple(layers)
        unknown = sorted(set(layers) - set(self.layers))
        if unknown:
            raise MissingLayerError(f"layers {unknown} are not in this store (it has {list(self.layers)})")
        return layers

    def _layout(self, path: str) -> ArrayLayout | None:
        if path not in self._layouts:
            self._layouts[path] = layout_of(self._array(path)) if self._direct else None
        return self._layouts[path]

    def _read(self, paths: list[str], start: int, stop: int) -> list[np.ndarray]:
        """Token rows [start, stop) of several arrays. Local arrays are read directly from their chunk
        files (``direct``); the others through Zarr, concurrently in one request rather than one
        blocking round-trip per array."""
        layouts = [self._layout(p) for p in paths]
        arrays = [self._array(p)._async_array for p, lay in zip(paths, layouts) if lay is None]  # opened outside the loop

        async def gather():
            return await asyncio.gather(*(a.getitem(slice(start, stop)) for a in arrays))

        with _decoding(self.location, ", ".join(p for p, lay in zip(paths, layouts) if lay is None)):
            from_zarr = iter(sync(gather()) if arrays else [])
        return [next(from_zarr) if lay is None else self._direct.read(lay, start, stop) for lay in layouts]

    def read_layer(self, layer: int, start: int, stop: int) -> np.ndarray:
        """Decoded hidden states (float32, (stop - start, hidden)) of one layer for a token range."""
        return self.tokens(start, stop, [layer]).hidden[layer]

    def _paths(self, layers: tuple[int, ...]) -> list[str]:
        parts = self.codec.parts()
        return [L.INPUT_IDS, L.LOSS_MASK] + [L.layer_path(k, name) for k in layers for name in parts]

    def _raw(self, start: int, stop: int, layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """ids, loss mask and each layer's encoded parts for tokens [start, stop)."""
        names = list(self.codec.parts())
        input_ids, loss_mask, *arrays = self._read(self._paths(layers), start, stop)
        per_layer = [dict(zip(names, arrays[i : i + len(names)])) for i in range(0, len(arrays), len(names))]
        return input_ids, loss_mask, per_layer

    def tokens(self, start: int, stop: int, layers=None) -> Tokens:
        """Tokens [start, stop) with the requested layers (all by default); like a slice, a range
        running past the end stops there."""
        layers = self._layers(layers)
        start, stop = min(start, self.n_tokens), min(stop, self.n_tokens)
        input_ids, loss_mask, per_layer = self._raw(start, stop, layers)
        return Tokens(input_ids, loss_mask, {k: self.codec.decode(p) for k, p in zip(layers, per_layer)},
                      offsets=np.array([0, stop - start]))

    def example(self, i: int, layers=None) -> Tokens:
        if not 0 <= i < self.n_examples:
            raise IndexError(f"example {i} out of range (store has {self.n_examples})")
        return self.tokens(int(self.offsets[i]), int(self.offsets[i + 1]), layers)

    def examples(self, indices, layers=None) -> Tokens:
        """Examples concatenated in the given order (see ``padded`` for how they are read)."""
        batch = self.padded(indices, layers)
        keep = (np.arange(batch.input_ids.shape[1]) < batch.lengths[:, None]).ravel()  # real tokens, in order
        flat = lambda a: a.reshape(-1, *a.shape[2:])[keep]
        return Tokens(flat(batch.input_ids).astype(np.int32), flat(batch.loss_mask).astype(np.uint8),
                      {k: flat(h) for k, h in batch.hidden.items()}, np.concatenate([[0], np.cumsum(batch.lengths)]))

    def padded(self, indices, layers=None, *, decode: bool = True) -> Padded:
        """Examples right-padded to the longest of them. Hidden states are decoded straight into
        place, or with ``decode=False`` left as the codec's parts, each padded the same way
        (``hidden[k] = {part: (B, T, ...)}``), for a consumer that decodes them itself.

        Examples that lie close together (a block of a length-sorted store, minus a few held-out
        examples) are read as their covering token range, in one read per array; scattered ones as
        one range per run of consecutive examples."""
        indices = np.asarray(list(indices), dtype=np.int64)
        if len(indices) == 0:
            raise ValueError("no examples requested")
        layers = self._layers(layers)
        starts, lengths = self.offsets[indices], self.lengths[indices]
        B, T = len(indices), int(lengths.max())
        hidden = self._padded_hidden(layers, B, T, decode)
        batch = Padded(np.zeros((B, T), np.int64), np.zeros((B, T), bool), hidden, lengths)
        for lo, hi in self._spans(indices):
            input_ids, loss_mask, per_layer = self._raw(lo, hi, layers)
            for i in np.flatnonzero((starts >= lo) & (starts < hi)):
                a, n = int(starts[i]) - lo, int(lengths[i])
                batch.input_ids[i, :n] = input_ids[a : a + n]
                batch.loss_mask[i, :n] = loss_mask[a : a + n]
                for k, parts in zip(layers, per_layer):
                    rows = {name: p[a : a + n] for name, p in parts.items()}
                    if decode:
                        self.codec.decode(rows, out=hidden[k][i, :n])
                    else:
                        for name, p in rows.items():
                            hidden[k][name][i, :n] = p
        return batch

    def _padded_hidden(self, layers: tuple[int, ...], B: int, T: int, decode: bool) -> dict:
        """Zeroed (B, T, ...) buffers per layer (and part). One allocation per part across layers: one
        large mapping, backed by huge pages where the kernel allows, faults far less than many."""
        if decode:
            return dict(zip(layers, np.zeros((len(layers), B, T, self.hidden_size), np.float32)))
        parts = {}
        for name, part in self.codec.parts().items():
            parts[name] = np.zeros((len(layers), B, T, *part.row_shape(self.hidden_size)), part.dtype)
        return {k: {name: buffers[j] for name, buffers in parts.items()} for j, k in enumerate(layers)}

    def _spans(self, indices: np.ndarray) -> list[tuple[int, int]]:
        """Token ranges to read for ``indices``: their covering range when it is at most twice what
        they hold, else one range per run of consecutive examples."""
        lo, hi = int(self.offsets[indices.min()]), int(self.offsets[indices.max() + 1])
        if hi - lo <= 2 * int(self.lengths[indices].sum()):
            return [(lo, hi)]
        return [(int(self.offsets[a]), int(self.offsets[b])) for a, b in _contiguous_runs(np.unique(indices))]

    def __repr__(self) -> str:
        return f"FeatureStore({self.location!r}, {self.n_examples} examples, {self.n_tokens} tokens)"


@contextmanager
def _decoding(location, what: str):
    """Zstd's own checks failing inside Zarr's pipeline (a frame checksum, a cut-off frame) as a
    CorruptStoreError naming the arrays."""
    try:
        yield
    except RuntimeError as e:
        if "zstd" not in str(e).lower():
            raise
        raise corrupt(location, f"a chunk of {what}", f"corrupt ({str(e).splitlines()[0]})") from None


def _unrecorded(store) -> bool:
    """Whether a store predates frame checksums and the integrity record: its chunks are then
    checked against their manifests' sha256."""
    from .storage import root_attrs

    return INTEGRITY not in root_attrs(store)


def _contiguous_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """[(first, last + 1)] for each run of consecutive indices."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(indices, breaks)]
