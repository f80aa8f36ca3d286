"""Copying a store object by object (`featurestore push` / `pull`), checksums verified on arrival.

The copy is a feature store from its first write on, marked incomplete: the root goes first with
``complete`` false, then the metadata, then every chunk or shard object (checked against the sha256
its manifest records), then each manifest whose objects all arrived intact, and the source's root
last, only when nothing went wrong. Re-running skips the objects already there with the right
checksum, so an interrupted or failed copy resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from . import inventory
from . import layout as L
from .storage import digest, local_path, object_sizes, open_store, read_bytes, write_bytes
from .writer import MARKER
from .errors import UserError

WORKERS = 8  # objects in flight: concurrent requests, bounded memory (a shard is a few MB)
PRESENT, COPIED = "present", "copied"


class TransferError(UserError, RuntimeError):
    """A copy that cannot start or did not complete; the message names the cause."""


@dataclass
class Copied:
    copied: int  # objects fetched and written now
    present: int  # objects already at the destination, intact
    nbytes: int  # bytes fetched now
    complete: bool  # the destination is a complete store


def _refuse_nesting(source, dest) -> None:
    """A copy into a folder inside its own source would copy itself (and the reverse would write
    over the store it reads): both refused before anything is written."""
    src, dst = (path.resolve() if (path := local_path(x)) else None for x in (source, dest))
    if src and dst and src != dst and (src in dst.parents or dst in src.parents):
        inner, outer = (dest, source) if src in dst.parents else (source, dest)
        raise TransferError(f"{inner} is inside {outer}: copy the store to a place outside it")


def copy_store(source, dest, *, allow_incomplete: bool = False,
               progress: Callable[[int, int], None] | None = None) -> Copied:
    """Copies the store at ``source`` to ``dest`` (paths or fsspec URLs). ``progress(bytes, total)``
    is called as objects are done. Raises TransferError naming the first bad object, if any."""
    _refuse_nesting(source, dest)
    src = open_store(source, cache_dir="off")
    try:
        dst = open_store(dest, writable=True)
    except ValueError as e:
        raise TransferError(str(e)) from None
    root = read_bytes(src, "zarr.json")
    attrs = _source_attrs(source, root, allow_incomplete)
    if _holds_complete_copy(dst, dest, attrs):
        return Copied(0, 0, 0, True)
    found = inventory.sections(src, attrs)
    if attrs.get("complete") and (unfinished := [s for s in found if s.checksums is None]):
        raise TransferError(f"{source} claims to be complete but its {unfinished[0].manifest} is missing or torn")
    write_bytes(dst, "zarr.json", _marked_incomplete(root))
    plan = [(key, None, "metadata") for key in inventory.metadata_keys(attrs, found)]
    plan += [(key, sha, s.where) for s in found for key, sha in sorted((s.checksums or {}).items())]
    outcomes = _copy_objects(src, dst, plan, progress)
    intact = {key for key, (outcome, _) in outcomes.items() if outcome in (PRESENT, COPIED)}
    for section in found:  # a manifest marks its shard done: only once all its objects are in
        if section.checksums is not None and intact.issuperset(section.checksums):
            write_bytes(dst, section.key, section.raw)
    bad = [(key, where) for key, _, where in plan if key not in intact]
    if bad:
        key, where = bad[0]
        raise TransferError(f"{key}: {outcomes[key][0]} ({where}); {len(bad)} of {len(plan)} objects bad, "
                            f"{dest} left incomplete; re-run to resume")
    write_bytes(dst, "zarr.json", root)  # last: `complete` as the source has it
    copied = sum(outcome == COPIED for outcome, _ in outcomes.values())
    return Copied(copied, len(plan) - copied, sum(n for _, n in outcomes.values()), bool(attrs.get("complete")))


def _source_attrs(source, root: bytes | None, allow_incomplete: bool) -> dict:
    attrs = _attributes(root) or {}
    if attrs.get("format") != MARKER:
        raise TransferError(f"no feature store at {source}")
    if attrs.get("format_version") != L.FORMAT_VERSION:
        raise TransferError(f"{source} has format version {attrs.get('format_version')}; this version of "
                            f"ladder-cache copies version {L.FORMAT_VERSION} only")
    if not attrs.get("complete") and not allow_incomplete:
        raise TransferError(f"{source} is incomplete (its extraction was interrupted or is still running); "
                            "copy its finished shards with --allow-incomplete")
    return attrs


def _holds_complete_copy(dst, dest, attrs: dict) -> bool:
    """Whether ``dest`` already holds this store, complete; refuses one holding anything else."""
    raw = read_bytes(dst, "zarr.json")
    if raw is None:
        path = local_path(dest)
        if path is not None and path.is_dir() and any(path.iterdir()):
            raise TransferError(f"{dest} exists and is not a feature store; choose a new destination")
        return False
    theirs = _attributes(raw)
    if theirs is None:  # a root cut off mid-write: an interrupted copy's
        return False
    if theirs.get("fingerprint") != attrs["fingerprint"]:
        raise TransferError(f"{dest} holds another store (fingerprint {str(theirs.get('fingerprint'))[:12]}); "
                            "choose a new destination")
    return bool(theirs.get("complete"))


def _attributes(raw: bytes | None) -> dict | None:
    try:
        return json.loads(raw)["attributes"] if raw is not None else None
    except (ValueError, KeyError, TypeError):
        return None


def _marked_incomplete(root: bytes) -> bytes:
    node = json.loads(root)
    node["attributes"]["complete"] = False
    return json.dumps(node, indent=2).encode()


def _copy_objects(src, dst, plan, progress) -> dict[str, tuple[str, int]]:
    """{key: (PRESENT, COPIED or what went wrong, bytes fetched)} of copying every object of
    ``plan`` on a pool of threads."""
    sizes = object_sizes(src, [key for key, _, _ in plan]) if progress else []
    outcomes, total = {}, sum(sizes)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {pool.submit(_copy_one, src, dst, key, sha): i for i, (key, sha, _) in enumerate(plan)}
        try:
            for future in as_completed(futures):
                outcomes[plan[futures[future]][0]] = future.result()
                if progress:
                    progress(sizes[futures[future]], total)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return outcomes


def _copy_one(src, dst, key: str, expected: str | None) -> tuple[str, int]:
    """(outcome, bytes fetched) of copying one object unless ``dst`` already holds it intact."""
    if expected is not None and (have := read_bytes(dst, key)) is not None and digest(have) == expected:
        return PRESENT, 0
    data = read_bytes(src, key)
    if data is None:
        return "missing at the source", 0
    if expected is not None and digest(data) != expected:
        return "checksum mismatch", len(data)
    if expected is None and not _is_json(data):
        return "not valid JSON (cut off?)", len(data)
    write_bytes(dst, key, data)
    return COPIED, len(data)


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False
