"""Where a store lives: a local path or any fsspec URL, and raw access to its objects.

Writers need a writable location (local or shared disk, or an object store); readers accept
anything fsspec reads, through a local read cache by default (see ``remote``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import json
import os
from pathlib import Path

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from .errors import StoreError
from .remote import open_remote


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def local_path(location: str | os.PathLike) -> Path | None:
    """The filesystem path of a local location (plain path or file:// URL), else None."""
    text = str(location)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return None if is_url(text) else Path(text).expanduser()


def open_store(location: str | os.PathLike, *, writable: bool = False, cache_dir: str | os.PathLike | None = None) -> Store:
    """A Zarr store for a path or URL. A URL read goes through the local read cache: ``cache_dir``,
    else the default (``remote.cache_root``); ``"off"`` reads uncached."""
    path = local_path(location)
    if path is not None:
        return LocalStore(path, read_only=not writable)
    if writable:
        if str(location).startswith(("http://", "https://")):
            raise StoreError(f"cannot write to {location}: HTTP is read-only here; use a path, file://, s3:// or gs://")
        return FsspecStore.from_url(str(location), read_only=False)
    return open_remote(str(location), cache_dir)


def read_bytes(store: Store, key: str) -> bytes | None:
    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def write_bytes(store: Store, key: str, data: bytes) -> None:
    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def read_json(store: Store, key: str) -> dict | None:
    """A JSON object, or None when it is missing or torn (a write cut off mid-way)."""
    data = read_bytes(store, key)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def write_json(store: Store, key: str, obj: dict) -> None:
    write_bytes(store, key, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_manifest(store: Store, path: str) -> dict | None:
    """A manifest (the attributes of an empty group at ``path``), or None when not written."""
    node = read_json(store, f"{path}/zarr.json")
    return None if node is None else node.get("attributes")


def write_manifest(store: Store, path: str, attributes: dict) -> None:
    write_json(store, f"{path}/zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": attributes})


def read_many(store: Store, keys: list[str]) -> list[bytes | None]:
    """Several objects in one concurrent request (None for each missing one)."""

    async def gather():
        return await asyncio.gather(*(store.get(key, prototype=default_buffer_prototype()) for key in keys))

    return [None if buf is None else buf.to_bytes() for buf in sync(gather())]


def object_sizes(store: Store, keys: list[str]) -> list[int]:
    """Bytes of each object (0 when missing): a stat locally, a HEAD request over HTTP."""

    async def size(key):
        try:
            return await store.getsize(key)
        except FileNotFoundError:
            return 0

    async def gather():
        return await asyncio.gather(*(size(key) for key in keys))

    return sync(gather())


def root_attrs(store: Store) -> dict:
    """The root group's attributes ({} when there is no readable root)."""
    return (read_json(store, "zarr.json") or {}).get("attributes", {})


def digest(data: bytes) -> str:
    """sha256: cryptographic, and hardware-accelerated on current CPUs (2.5x blake2b here)."""
    return hashlib.sha256(data).hexdigest()


class ChecksumStore(WrapperStore):
    """Records a digest of every chunk or shard object written through it, so a writer can
    checksum the exact bytes Zarr stored without reading them back."""

    def __init__(self, store: Store):
        super().__init__(store)
        self.digests: dict[str, str] = {}

    async def set(self, key, value):
        if "/c/" in key:
            self.digests[key] = digest(value.to_bytes())
        await self._store.set(key, value)


# What a user can fix about where a store is written: space, quota, permissions.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def disk_errors(function):
    """Turns a full disk, a quota or a read-only or forbidden location met while ``function``
    writes a store into a one-line StoreError (what is written so far stays, marked incomplete)."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except OSError as e:
            if e.errno not in DISK_ERRNOS:
                raise
            where = f" ({e.filename})" if e.filename else ""
            raise StoreError(f"cannot write the store: {os.strerror(e.errno)}{where}; free space or fix permissions, "
                             "then rerun with --resume (finished shards are kept)") from None

    return wrapped


def size_on_disk(location) -> int:
    """Total bytes of every object under a store (local walk, or fsspec du for URLs)."""
    path = local_path(location)
    if path is not None:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(location))
    return int(fs.du(root))
