"""Reading a store from a URL: whole objects over fsspec, kept in a local read cache.

Objects are always fetched whole, never by byte range and never by listing: plain HTTP servers
cannot list directories reliably and may ignore Range headers (Python's http.server answers one
with the whole file). Zarr's partial reads of a shard are cut from the whole object, on local disk
once cached.

Only a complete store is cached: it is written once and never changes. Each URL gets a directory
(itself a local copy of the objects read so far) under ``$LADDER_REMOTE_CACHE``, else
``$LADDER_CACHE_DIR/remote`` (default ``~/.cache/ladder-cache/remote``); ``off`` turns caching off.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core import sync as zarr_sync
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

REMOTE_CACHE_ENV = "LADDER_REMOTE_CACHE"
OFF = "off"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The read cache's directory: ``cache_dir``, else $LADDER_REMOTE_CACHE, else the default;
    None when either says ``off``."""
    value = str(cache_dir or os.environ.get(REMOTE_CACHE_ENV) or "")
    if value.lower() == OFF:
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("LADDER_CACHE_DIR") or "~/.cache/ladder-cache").expanduser() / "remote"


def cache_path(url: str, root: Path) -> Path:
    """``<root>/<last part of the URL>-<hash of the URL>``: readable, and one per URL."""
    url = url.rstrip("/")
    name = re.sub(r"[^\w.-]", "_", url.rsplit("/", 1)[-1])[:64]
    return root / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


class RemoteStore(WrapperStore):
    """A read-only remote store read whole object by whole object, through ``cache`` if given."""

    def __init__(self, store: Store, cache: LocalStore | None = None):
        super().__init__(store)
        self.cache = cache

    def _with_store(self, store: Store) -> RemoteStore:
        return type(self)(store, self.cache)

    async def get(self, key, prototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if self.cache is not None and (hit := await self.cache.get(key, prototype, byte_range)) is not None:
            return hit
        value = await self._store.get(key, prototype)
        if value is None:
            return None
        if self.cache is not None:
            await self.cache.set(key, value)  # atomic: written aside, then renamed into place
        return cut(value, byte_range)

    async def get_checked(self, key: str, prototype, check) -> Buffer | None:
        """The whole object ``key``, passed through ``check`` (which raises on bad bytes) whether it
        comes from the cache or the remote; a fetched copy enters the cache only once it passed, so
        a refused object is never cached."""
        if self.cache is not None and (hit := await self.cache.get(key, prototype)) is not None:
            await check(hit)
            return hit
        value = await self._store.get(key, prototype)
        if value is not None:
            await check(value)
            if self.cache is not None:
                await self.cache.set(key, value)  # atomic: written aside, then renamed into place
        return value

    async def get_partial_values(self, prototype, key_ranges):
        return await gather_all(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)

    async def evict(self, key: str) -> None:
        """Drops ``key`` from the read cache (a copy found bad), so the next get fetches it again."""
        if self.cache is not None:
            await self.cache.delete(key)

    async def getsize(self, key: str) -> int:
        """From the cache when there, else asked of the remote (a HEAD request over HTTP)."""
        if self.cache is not None and await self.cache.exists(key):
            return await self.cache.getsize(key)
        return await self._store.getsize(key)


async def gather_all(awaitables):
    """``asyncio.gather`` that lets every read finish before raising the first error: a refused
    object must not leave sibling reads pending (each would print "Task was destroyed but it is
    pending!" as the event loop closes)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    if error := next((r for r in results if isinstance(r, BaseException)), None):
        raise error
    return results


def cut(value: Buffer, byte_range: ByteRequest | None) -> Buffer:
    if byte_range is None:
        return value
    if isinstance(byte_range, RangeByteRequest):
        return value[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return value[byte_range.offset :]
    return value[max(0, len(value) - byte_range.suffix) :]  # SuffixByteRequest


def open_remote(url: str, cache_dir: str | os.PathLike | None = None) -> RemoteStore:
    """A read-only store for a URL, caching the objects of a complete store (see the module doc)."""
    if not _drain_registered:
        atexit.register(_drain_reads)  # after zarr's own handler, so it runs before zarr stops its loop
        _drain_registered.append(True)
    remote = FsspecStore.from_url(url, read_only=True)
    root = cache_root(cache_dir)
    return RemoteStore(remote, None if root is None else _cache(remote, cache_path(url, root)))


_drain_registered: list[bool] = []


def _drain_reads(timeout: float = 10.0) -> None:
    """At exit, lets the reads still in flight on zarr's event loop finish (or cancels them): zarr
    gathers the reads of a shard without waiting for the rest once one fails, and a refused object
    would otherwise leave its siblings pending, each printing "Task was destroyed but it is
    pending!" as the loop stops. Nothing is in flight after reads that succeed: no wait then."""
    loop = zarr_sync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def drain():
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            _, pending = await asyncio.wait(others, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout + 5)
    except Exception:  # at exit, a drain that cannot run must not turn into an error of its own
        pass


def _cache(remote: Store, path: Path) -> LocalStore | None:
    """The cache at ``path`` if the store may be cached: only once complete. Refreshes the cached
    root from the remote (one small request), drops a cache left by another store at the same URL,
    and serves a cached complete store when the remote cannot be reached."""
    cached_root = path / "zarr.json"
    cached = _attributes(cached_root.read_bytes() if cached_root.is_file() else None)
    try:
        node = sync(remote.get("zarr.json", default_buffer_prototype()))
    except OSError:  # unreachable (aiohttp's connection errors are OSErrors)
        if cached.get("complete"):
            return LocalStore(path)
        raise
    current = _attributes(None if node is None else node.to_bytes())
    if cached and cached.get("fingerprint") != current.get("fingerprint"):
        shutil.rmtree(path, ignore_errors=True)
    if not current.get("complete"):
        return None
    cache = LocalStore(path)
    if cached != current:
        sync(cache.set("zarr.json", node))  # atomic: concurrent readers (sweep workers) never see half
    return cache


def _attributes(root: bytes | None) -> dict:
    """The attributes of a root zarr.json; {} when missing or unreadable."""
    try:
        return json.loads(root).get("attributes", {}) if root is not None else {}
    except (ValueError, AttributeError):
        return {}
