"""Checking what a reader reads against what the writer recorded: a bad byte is an error, never a number.

Chunk objects. Stores write zstd frames with their content checksum (xxhash64 of the decoded
bytes, 4 bytes a frame), which zstd itself checks while decompressing: every read is checked at
no measurable cost. Stores written before that carry no frame checksum; their objects are checked
against the sha256 their manifests record, once per object per process (``Digests``). A chunk
object that is missing is an error naming it: Zarr would silently read its fill value, zeros.

Metadata. On completion the writer records in the root attribute ``integrity`` the sha256 of
every other metadata document (group and array ``zarr.json``, manifests included) and of the root's
own attributes. The reader checks the root when it opens a store and each array's document when
it opens the array; ``verify`` checks them all. Stores without ``integrity`` (written before it)
are read as before.
"""

from __future__ import annotations

import json

import numpy as np
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

from . import layout as L
from .errors import CorruptStoreError
from .remote import cut, gather_all
from .storage import digest, read_bytes

INTEGRITY = "integrity"  # root attribute: {"root": sha256, "documents": {key: sha256}}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
FRAME_CHECKSUM_FLAG = 0x04  # Content_Checksum_flag of the frame header descriptor (RFC 8878)


def corrupt(location, key: str, why: str) -> CorruptStoreError:
    error = CorruptStoreError(f"{key} of {location} is {why}; the store is damaged: run `featurestore verify "
                              f"{location}`, then extract or pull it again")
    error.problem = f"{key}: {why}"  # what `verify` itself reports (it must not tell you to run verify)
    return error


def is_chunk(key: str) -> bool:
    """Whether ``key`` names a chunk or shard object (``layers/3/codes/c/2/0``), not a document."""
    return "/c/" in key


def frame_checked(data: bytes) -> bool:
    """Whether ``data`` starts a zstd frame that carries its content checksum."""
    return len(data) > 4 and data[:4] == ZSTD_MAGIC and bool(data[4] & FRAME_CHECKSUM_FLAG)


class Digests:
    """The sha256 the manifests record for each chunk object, manifests read as needed: the check
    of stores whose frames carry no checksum. ``complete``: whether the store is complete, so that
    every chunk object must exist and be named by a manifest (an incomplete store, opened on
    request, reads the shards not yet written as zeros, as Zarr does)."""

    def __init__(self, store: Store, complete: bool = True):
        self.store, self.complete = store, complete
        self._manifests: dict[str, dict] = {}

    async def _checksums(self, path: str) -> dict:
        if path not in self._manifests:
            buf = await self.store.get(f"{path}/zarr.json", default_buffer_prototype())
            try:
                checksums = json.loads(buf.to_bytes())["attributes"]["checksums"] if buf is not None else {}
            except (ValueError, KeyError, TypeError):
                checksums = {}
            self._manifests[path] = checksums if isinstance(checksums, dict) else {}
        return self._manifests[path]

    async def expected(self, key: str) -> str | None:
        if (sha := (await self._checksums(L.LAYOUT_MANIFEST)).get(key)) is not None:
            return sha
        try:
            shard = int(key.split("/c/", 1)[1].split("/", 1)[0])  # token-major: outer chunk j is shard j
        except (IndexError, ValueError):
            return None
        return (await self._checksums(L.shard_manifest(shard))).get(key)


def check_digest(location, key: str, data: bytes, digests: Digests) -> None:
    """For synchronous callers (the direct reader)."""
    _compare(location, key, data, sync(digests.expected(key)), digests.complete)


async def acheck_digest(location, key: str, data: bytes, digests: Digests) -> None:
    _compare(location, key, data, await digests.expected(key), digests.complete)


def _compare(location, key: str, data: bytes, expected: str | None, complete: bool) -> None:
    if expected is None:
        if complete:
            raise corrupt(location, key, "not named by any manifest")
        return  # a shard of an incomplete store not finished yet: nothing vouches for it
    if digest(data) != expected:
        raise corrupt(location, key, "corrupt (sha256 differs from its manifest)")


class CheckedStore(WrapperStore):
    """The store a reader reads through: a missing chunk object is an error, never zeros; with
    ``by_manifest`` every chunk object is checked against its manifest's sha256 when first read
    (stores without frame checksums, and remote objects before they are trusted). A bad object of
    a remote store's read cache is evicted and fetched again once before failing."""

    def __init__(self, store: Store, location, by_manifest: bool, complete: bool = True):
        super().__init__(store)
        self.location, self.by_manifest, self.complete = location, by_manifest, complete
        self.digests = Digests(store, complete)
        self._verified: set[str] = set()

    def _with_store(self, store: Store) -> CheckedStore:
        return type(self)(store, self.location, self.by_manifest, self.complete)

    async def get(self, key, prototype, byte_range: ByteRequest | None = None):
        if not is_chunk(key):
            return await self._store.get(key, prototype, byte_range)
        if self.by_manifest and key not in self._verified:
            value = await self._checked(key, prototype)
            if value is not None or not self.complete:
                self._verified.add(key)
                return None if value is None else cut(value, byte_range)
        else:
            value = await self._store.get(key, prototype, byte_range)
        if value is None and self.complete:
            raise corrupt(self.location, key, "missing")
        return value

    async def _checked(self, key, prototype):
        """The whole object, checked against its manifest. Through a remote store's read cache a bad
        copy is evicted and fetched again once (the cache rotted, or the server's copy was fixed),
        and a copy that fails is never cached."""
        async def check(value):
            await acheck_digest(self.location, key, value.to_bytes(), self.digests)

        if not hasattr(self._store, "get_checked"):
            value = await self._store.get(key, prototype)
            if value is not None:
                await check(value)
            return value
        try:
            return await self._store.get_checked(key, prototype, check)
        except CorruptStoreError:
            await self._store.evict(key)
        return await self._store.get_checked(key, prototype, check)

    async def get_partial_values(self, prototype, key_ranges):
        return await gather_all(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)


# -- metadata ------------------------------------------------------------------------------------


def _root_digest(attrs: dict) -> str:
    from .fingerprint import canonical_json

    plain = json.loads(json.dumps({k: v for k, v in attrs.items() if k not in (INTEGRITY, "complete")}))
    return digest(canonical_json(plain).encode())


def record(store: Store, attrs: dict, keys: list[str]) -> dict:
    """The ``integrity`` attribute of a store about to be completed with root ``attrs``:
    the digest of the root's attributes and of each document in ``keys``."""
    from .storage import read_many

    documents = {key: digest(data) for key, data in zip(keys, read_many(store, keys)) if data is not None}
    return {"root": _root_digest(attrs), "documents": documents}


def check_root(attrs: dict, location) -> None:
    """Refuses a root whose attributes changed since completion (a store without the record passes)."""
    record_ = attrs.get(INTEGRITY)
    if record_ is None:
        return
    if not isinstance(record_, dict) or record_.get("root") != _root_digest(attrs):
        raise corrupt(location, "zarr.json", "changed since the store was completed (its attributes do not "
                      "match their recorded digest)")


def check_document(store: Store, attrs: dict, key: str, location) -> None:
    """Refuses a metadata document that differs from the digest recorded at completion."""
    expected = (attrs.get(INTEGRITY) or {}).get("documents", {}).get(key)
    if expected is None:
        return
    data = read_bytes(store, key)
    if data is None:
        raise corrupt(location, key, "missing")
    if digest(data) != expected:
        raise corrupt(location, key, "changed since the store was completed (digest mismatch)")


def check_manifests(store: Store, attrs: dict, location) -> None:
    """Refuses a store whose shard manifests (one small document per shard, read together) differ
    from the digests recorded at completion: what vouches for the data is checked on open."""
    from .storage import read_many

    documents = (attrs.get(INTEGRITY) or {}).get("documents", {})
    keys = sorted(key for key in documents if key.startswith("manifest/shard-"))
    for key, data in zip(keys, read_many(store, keys)):
        if data is None:
            raise corrupt(location, key, "missing")
        if digest(data) != documents[key]:
            raise corrupt(location, key, "changed since the store was completed (digest mismatch)")


def offsets_problem(offsets: np.ndarray, n_examples: int, n_tokens: int) -> str | None:
    """What is wrong with a store's example offsets, or None: they must start at 0, never
    decrease and end at the token count, one more than the examples."""
    if offsets.ndim != 1 or len(offsets) != n_examples + 1:
        return f"holds {offsets.size} offsets for {n_examples} examples"
    if len(offsets) and (offsets[0] != 0 or offsets[-1] != n_tokens):
        return f"runs from {offsets[0]} to {offsets[-1]}, not 0 to {n_tokens}"
    if np.any(np.diff(offsets) <= 0):
        return "has an example of no tokens or a decreasing offset"
    return None
