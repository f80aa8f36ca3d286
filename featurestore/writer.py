"""Writing a feature store: once, shard by shard, index and `complete` last."""

from __future__ import annotations

import datetime
import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from . import integrity, inventory
from . import layout as L
from .codecs import CodecError
from .layout import Geometry, StoreSpec, TokenTable
from .storage import (
    ChecksumStore,
    digest,
    disk_errors,
    local_path,
    open_store,
    read_json,
    read_manifest,
    read_many,
    write_manifest,
)
from .errors import StoreError
from .integrity import INTEGRITY

MARKER = "ladder-cache feature store"
ENCODE_BYTES = 512 * 576 * 4  # float32 rows encoded at a time (~1 MB, cache-sized): 512 rows at d = 576, 72 at 4096

# one layer's encoded rows: codec parts, per-row max |x| (float32), per-row sum x^2 (float64)
EncodedRows = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ladder-cache")
    except PackageNotFoundError:
        return "unknown"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class StoreWriter:
    """Writes one feature store. Use it as a context manager::

        with StoreWriter(path, spec, tokens, meta=meta, head=head) as writer:
            writer.write(start_token, {layer: rows})  # any batch size, increasing token order

    Rows are encoded as they arrive and buffered until a whole shard is present; the shard is then
    written with its manifest (checksums + stats), which is what marks it done. On a clean exit
    the store is finalised: ``complete`` is set last. An interrupted writer leaves an incomplete
    store; ``resume=True`` continues it after its finished shards and never rewrites one.

    ``shards`` restricts the writer to some shards (distributed extraction: each rank owns a
    disjoint set); rows of other shards are dropped. It may be a function of the store's
    :class:`Geometry`, because a resumed store keeps the geometry it was created with. Only a writer
    that owns every shard finalises on exit; otherwise call :func:`finalize` once all writers are
    done. ``attach=True`` joins a store that another writer of the same run has just created or
    resumed (rank 0 creates, the other ranks attach after a barrier): it never creates, so a rank
    can never wipe what rank 0 wrote, and it needs no ``resume``.
    """

    @disk_errors
    def __init__(
        self,
        location,
        spec: StoreSpec,
        tokens: TokenTable,
        *,
        meta: list[dict] | None = None,
        head: dict[str, np.ndarray] | None = None,
        head_config: dict | None = None,
        blocks: tuple[dict[str, np.ndarray], dict] | None = None,
        resume: bool = False,
        attach: bool = False,
        shards: Iterable[int] | Callable[[Geometry], Iterable[int]] | None = None,
        chunk_mb: float = 4.0,
        extra_attrs: dict | None = None,
    ):
        if tokens.n_tokens == 0:
            raise StoreError("nothing to store: the dataset has no tokens")
        if L.WRITER_ATTRS & set(extra_attrs or {}):
            raise ValueError(f"extra_attrs {sorted(L.WRITER_ATTRS & set(extra_attrs))} are the writer's own attributes")
        if meta is not None and len(meta) != tokens.n_examples:
            raise ValueError(f"meta has {len(meta)} entries for {tokens.n_examples} examples")
        self.location, self.spec, self.tokens = location, spec, tokens
        self.codec = spec.codec
        self.fingerprint = spec.fingerprint(tokens)
        self._store = ChecksumStore(open_store(location, writable=True))
        existing = self._existing_attrs()
        created = existing and read_manifest(self._store, L.LAYOUT_MANIFEST) is not None
        if created and not (resume or attach):
            raise StoreError(f"{location} holds an interrupted write of this store; resume it (--resume) or choose a new path")
        self.rewritten: list[int] = []  # finished shards a resume found damaged, to be written again
        if created and resume and not attach:
            created = self._recheck(existing)
        if created:
            self.group = zarr.open_group(self._store, mode="r+")
            self.geometry = Geometry(tokens.n_tokens, existing["chunk_tokens"], existing["shard_tokens"])
        elif attach:
            raise StoreError(f"{location} has not been created: nothing to attach to")
        else:
            self.geometry = Geometry.plan(tokens.n_tokens, spec.row_bytes(), chunk_mb)
            frozen = {L.HEAD: (head or {}, head_config or {}), **({L.BLOCKS: blocks} if blocks else {})}
            self.group = self._create(meta, frozen, extra_attrs or {})
        self._arrays = {
            (k, name): self.group[L.layer_path(k, name)] for k in spec.layers for name in self.codec.parts()
        }
        if callable(shards):
            shards = shards(self.geometry)
        owned = set(range(self.geometry.n_shards)) if shards is None else set(shards)
        self.owns_all = owned == set(range(self.geometry.n_shards))
        self._todo = {j for j in owned if read_manifest(self._store, L.shard_manifest(j)) is None}
        self._cursor = 0  # next token expected
        self._pending: dict[int, list[dict]] = {}
        self._stats: dict[int, list[float]] = {}
        self._filled = -1  # first token of the current shard not yet buffered

    # -- creation ---------------------------------------------------------------------------

    def _recheck(self, attrs: dict) -> bool:
        """Re-verifies what a resume keeps: a finished shard whose objects fail their manifest loses
        its manifest (so it is written again); damaged tokens, examples or head (written at creation)
        mean creating the store again. Returns whether the creation stands."""
        for section in inventory.sections(self._store, attrs):
            if section.checksums is None or _intact(self._store, section.checksums):
                continue
            if section.manifest == L.LAYOUT_MANIFEST:
                return False
            sync(self._store.delete(section.key))
            self.rewritten.append(int(section.manifest.rsplit("-", 1)[1]))
        return True

    def _existing_attrs(self) -> dict | None:
        root = read_json(self._store, "zarr.json")
        if root is None:
            path = local_path(self.location)
            if path is not None and path.exists() and any(path.iterdir()):
                raise StoreError(f"{self.location} exists and is not a feature store; choose a new path")
            return None
        attrs = root.get("attributes", {})
        if attrs.get("format") != MARKER:
            raise StoreError(f"{self.location} exists and is not a feature store; choose a new path")
        if attrs.get("fingerprint") != self.fingerprint:
            raise StoreError(
                f"{self.location} holds a different store (fingerprint {attrs.get('fingerprint', '?')[:12]}); "
                "choose a new path"
            )
        if attrs.get("complete"):
            raise StoreError(f"{self.location} already holds this complete store; nothing to write")
        return attrs

    def _create(self, meta, frozen: dict[str, tuple[dict, dict]], extra_attrs) -> zarr.Group:
        """Creates the group, the token layout and the frozen weights (the head, the top blocks:
        {group: (arrays, config)}), then the layout manifest (which marks creation done: a cut-off
        creation is simply redone)."""
        spec, geo, tokens = self.spec, self.geometry, self.tokens
        group = zarr.open_group(self._store, mode="w")
        group.attrs.put(
            {
                "format": MARKER,
                "format_version": L.FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "complete": False,
                "created": now(),
                "tool_version": tool_version(),
                "layers": list(spec.layers),
                "hidden_size": spec.hidden_size,
                "codec": spec.codec.spec,
                "tokens_digest": tokens.digest,
                "n_examples": tokens.n_examples,
                "n_tokens": tokens.n_tokens,
                "chunk_tokens": geo.chunk_tokens,
                "shard_tokens": geo.shard_tokens,
            }
            | spec.source
            | extra_attrs  # neither may reuse the writer's names: checked by StoreSpec and __init__
        )
        self._array(group, L.OFFSETS, tokens.offsets, chunks=(max(1, len(tokens.offsets)),))
        self._array(group, L.INPUT_IDS, tokens.input_ids)
        self._array(group, L.LOSS_MASK, tokens.loss_mask)
        meta_strings = [_json(m) for m in (meta or [{}] * tokens.n_examples)]
        group.create_array(L.META, shape=(tokens.n_examples,), dtype=str, chunks=(max(1, tokens.n_examples),),
                           compressors=[ZstdCodec(level=3, checksum=True)])
        group[L.META][:] = np.array(meta_strings, dtype=object)
        for name, (arrays, config) in frozen.items():
            weights = group.require_group(name)
            weights.attrs.put(config)
            for key, weight in arrays.items():
                self._array(weights, key, np.asarray(weight), chunks=weight.shape)
        for k in spec.layers:
            for name, part in spec.codec.parts().items():
                width = part.row_shape(spec.hidden_size)
                chunks = (geo.chunk_tokens if part.width == "hidden" else geo.shard_tokens, *width)
                shards = (geo.shard_tokens, *width) if part.width == "hidden" else None
                group.create_array(
                    L.layer_path(k, name),
                    shape=(tokens.n_tokens, *width),
                    dtype=part.dtype,
                    chunks=chunks,
                    shards=shards,
                    compressors=[ZstdCodec(level=spec.codec.zstd_level, checksum=True)],
                    fill_value=0,
                    config={"write_empty_chunks": True},
                    dimension_names=("token", "channel")[: 1 + len(width)],
                )
        group.require_group("manifest")
        write_manifest(self._store, L.LAYOUT_MANIFEST, {"checksums": dict(self._store.digests)})
        self._store.digests.clear()
        return group

    def _array(self, group, path, data, chunks=None):
        chunks = chunks or (self.geometry.shard_tokens,)
        array = group.create_array(
            path,
            shape=data.shape,
            dtype=data.dtype,
            chunks=tuple(max(1, c) for c in chunks),
            compressors=[ZstdCodec(level=3, checksum=True)],  # checked on every read
            fill_value=0,
            config={"write_empty_chunks": True},
        )
        if data.size:
            array[...] = data

    # -- writing ----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self._todo

    def needs(self, start: int, stop: int) -> bool:
        """Whether tokens [start, stop) touch a shard this writer still has to write: a resumed
        or distributed producer skips the batches that don't."""
        first, last = self.geometry.shard_of(start), self.geometry.shard_of(max(start, stop - 1))
        return any(j in self._todo for j in range(first, last + 1))

    @disk_errors
    def write(self, start: int, rows: dict[int, np.ndarray]) -> None:
        """Rows for tokens [start, start + n) of every layer. Tokens already written (earlier
        shards, a resumed run) or owned by another writer are dropped."""
        self.write_encoded(start, self.encode(rows))

    def encode(self, rows: dict[int, np.ndarray]) -> dict[int, EncodedRows]:
        """Float32 rows of every layer, encoded by the store's codec with their per-row stats, in
        blocks small enough to stay in the CPU cache through the codec's passes (about twice as
        fast as whole batches; rows are independent). Thread-safe: a pool may encode batches at once."""
        if set(rows) != set(self.spec.layers):
            raise ValueError(f"expected layers {list(self.spec.layers)}, got {sorted(rows)}")
        n = len(next(iter(rows.values())))
        encoded = {}
        for k, x in rows.items():
            if x.shape != (n, self.spec.hidden_size):
                raise ValueError(f"layer {k}: expected shape ({n}, {self.spec.hidden_size}), got {x.shape}")
            x = np.ascontiguousarray(x, dtype=np.float32)
            with np.errstate(invalid="ignore", over="ignore"):  # inf / nan rows are refused by their absmax
                step = max(16, ENCODE_BYTES // (4 * max(1, x.shape[1])))
                blocks = [self.codec.encode_rows(b) for b in np.split(x, range(step, len(x), step))]
            if len(blocks) == 1:
                encoded[k] = blocks[0]
            else:
                parts = {name: np.concatenate([b[0][name] for b in blocks]) for name in blocks[0][0]}
                encoded[k] = (parts, np.concatenate([b[1] for b in blocks]), np.concatenate([b[2] for b in blocks]))
        return encoded

    @disk_errors
    def write_encoded(self, start: int, encoded: dict[int, EncodedRows]) -> None:
        """``write`` of rows already encoded (``encode``, or a device encoder giving the same bits:
        ``extract.encode``): per layer (parts, per-row absmax, per-row energy)."""
        if set(encoded) != set(self.spec.layers):
            raise ValueError(f"expected layers {list(self.spec.layers)}, got {sorted(encoded)}")
        n = len(next(iter(encoded.values()))[1])
        for k, (parts, absmax, energy) in encoded.items():
            if set(parts) != set(self.codec.parts()) or any(len(p) != n for p in parts.values()) or len(energy) != n:
                raise ValueError(f"layer {k}: expected parts {list(self.codec.parts())} of {n} rows")
        end = start + n
        if end > self.tokens.n_tokens:
            raise ValueError(f"tokens {start}..{end} run past the store's {self.tokens.n_tokens} tokens")
        pos = max(start, self._cursor)
        while pos < end:
            shard = self.geometry.shard_of(pos)
            lo, hi = self.geometry.shard_range(shard)
            stop = min(hi, end)
            if shard in self._todo:
                if pos != (lo if self._filled < 0 else self._filled):
                    raise ValueError(f"tokens {lo if self._filled < 0 else self._filled}..{pos} were never written")
                a, b = pos - start, stop - start
                self._buffer({k: ({name: p[a:b] for name, p in parts.items()}, absmax[a:b], energy[a:b])
                              for k, (parts, absmax, energy) in encoded.items()})
                self._filled = stop
                if stop == hi:
                    self._flush(shard)
            pos = stop
        self._cursor = max(self._cursor, end)

    def _buffer(self, encoded: dict[int, EncodedRows]) -> None:
        """Checks and measures encoded rows (their absmax and energy), then holds them for the shard."""
        for k, (parts, absmax, energy) in encoded.items():
            top = float(absmax.max(initial=0))
            if not np.isfinite(top) or not np.isfinite(absmax).all():
                raise CodecError(f"layer {k}: hidden states contain inf or nan")
            if top > self.codec.max_abs:
                raise CodecError(
                    f"layer {k}: values reach {top:.6g}, beyond codec {self.codec.name}'s range "
                    f"(±{self.codec.max_abs:g}); use --codec bf16 (same size, float32 range)"
                )
            stat = self._stats.setdefault(k, [0.0, []])
            stat[0] = max(stat[0], top)
            stat[1].append(energy)
            self._pending.setdefault(k, []).append(parts)

    def _flush(self, shard: int) -> None:
        lo, hi = self.geometry.shard_range(shard)
        writes, keys = [], []
        for k in self.spec.layers:
            chunks = self._pending.pop(k)
            for name in self.codec.parts():
                array = self._arrays[(k, name)]
                writes.append(array._async_array.setitem(slice(lo, hi), np.concatenate([c[name] for c in chunks])))
                keys.append(f"{array.path}/{array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))}")
        sync(_gather(writes))  # one request for the whole shard: Zarr compresses arrays concurrently
        # an exactly rounded sum: the same bits however the rows were batched or encoded
        stats = {str(k): {"absmax": a, "sumsq": math.fsum(np.concatenate(e).tolist())} for k, (a, e) in self._stats.items()}
        checksums = {key: self._store.digests.pop(key) for key in keys}
        write_manifest(self._store, L.shard_manifest(shard), {"tokens": [lo, hi], "checksums": checksums, "stats": stats})
        self._todo.discard(shard)
        self._stats.clear()
        self._filled = -1

    # -- closing ----------------------------------------------------------------------------

    def close(self, extra_stats: dict | None = None) -> None:
        """Finalises the store if this writer owns every shard and all are written."""
        if self._todo:
            missing = self.geometry.shard_range(min(self._todo))[0]
            raise StoreError(f"writer closed before token {missing} was written; the store stays incomplete")
        if self.owns_all:
            finalize(self.location, extra_stats)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


@disk_errors
def finalize(location, extra_stats: dict | None = None) -> dict:
    """Completes a store whose shards are all written: aggregates stats, then sets ``complete``."""
    store = open_store(location, writable=True)
    group = zarr.open_group(store, mode="r+")
    attrs = dict(group.attrs)
    geometry = Geometry(attrs["n_tokens"], attrs["chunk_tokens"], attrs["shard_tokens"])
    manifests = [read_manifest(store, L.shard_manifest(j)) for j in range(geometry.n_shards)]
    missing = [j for j, m in enumerate(manifests) if m is None]
    if missing:
        raise StoreError(f"cannot complete {location}: {len(missing)} shards unwritten (first: shard {missing[0]})")
    hidden = attrs["hidden_size"]
    layers = {}
    for k in attrs["layers"]:
        shard_stats = [m["stats"][str(k)] for m in manifests]
        layers[str(k)] = {
            "absmax": max(s["absmax"] for s in shard_stats),
            "rms": float(np.sqrt(sum(s["sumsq"] for s in shard_stats) / (attrs["n_tokens"] * hidden))),
        }
    stats = {"n_tokens": attrs["n_tokens"], "n_examples": attrs["n_examples"], "layers": layers, **(extra_stats or {})}
    final = attrs | {"stats": stats, "completed": now()}
    found = inventory.sections(store, attrs)
    documents = inventory.metadata_keys(attrs, found) + [section.key for section in found]
    group.attrs.update(final | {INTEGRITY: integrity.record(store, final, documents), "complete": True})
    return stats


def _intact(store, checksums: dict[str, str]) -> bool:
    keys = sorted(checksums)
    return all(data is not None and digest(data) == checksums[key] for key, data in zip(keys, read_many(store, keys)))


async def _gather(coroutines):
    import asyncio

    await asyncio.gather(*coroutines)


def _json(obj) -> str:
    from .fingerprint import canonical_json

    return canonical_json(obj)


class BackgroundWriter:
    """Runs a writer's ``write`` calls on a thread, so the producer (a model) never waits on
    encoding or disk. A bounded queue gives back-pressure; a writer error is raised in the
    producer at its next call.

    ``threads`` > 1 encodes up to that many batches at once on a pool (numpy releases the GIL in
    its loops), while one thread buffers and writes them in order; Zarr compresses and checksums a
    shard's chunks on its own thread pool either way. ``write_encoded`` takes rows a device has
    already encoded, with an optional ``ready`` callable the writer thread calls first (e.g. to wait
    for asynchronous copies into host memory)."""

    def __init__(self, writer: StoreWriter, max_pending: int = 4, threads: int = 1):
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="store-encoder") if threads > 1 else None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    start, kind, payload, ready = item
                    if ready is not None:
                        ready()
                    if kind == "rows":
                        self.writer.write(start, payload)
                    else:
                        self.writer.write_encoded(start, payload.result() if kind == "future" else payload)
                except BaseException as e:  # noqa: BLE001 - re-raised in the producer
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, start: int, rows: dict[int, np.ndarray]) -> None:
        self._raise()
        if self._pool is None:
            self._queue.put((start, "rows", rows, None))
        else:
            self._queue.put((start, "future", self._pool.submit(self.writer.encode, rows), None))

    def write_encoded(self, start: int, encoded: dict[int, EncodedRows], ready: Callable[[], None] | None = None) -> None:
        self._raise()
        self._queue.put((start, "encoded", encoded, ready))

    def join(self) -> None:
        """Waits for every queued write; raises the writer's error if one happened."""
        self._queue.put(None)
        self._thread.join()
        self._shutdown()
        self._raise()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.join()
        else:  # stop the thread; finished shards stay done, the store stays incomplete
            self._error = self._error or exc
            self._queue.put(None)
            self._thread.join()
            self._shutdown()
