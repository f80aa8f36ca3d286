"""A root directory of stores: what is in it, which store has a given fingerprint, and who is
writing one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import StoreError
from .storage import DISK_ERRNOS, open_store, read_json
from .writer import MARKER


def stores_in(root) -> list[tuple[Path, dict]]:
    """(path, attrs) of every feature store directly under a local ``root``, sorted by name."""
    root = Path(root)
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        node = read_json(open_store(path), "zarr.json") if (path / "zarr.json").is_file() else None
        attrs = (node or {}).get("attributes", {})
        if attrs.get("format") == MARKER:
            found.append((path, attrs))
    return found


def find(root, fingerprint: str) -> tuple[Path, dict] | None:
    """(path, attrs) of the store under ``root`` with this fingerprint, preferring a complete one."""
    matches = [(path, attrs) for path, attrs in stores_in(root) if attrs.get("fingerprint") == fingerprint]
    return max(matches, key=lambda m: bool(m[1].get("complete")), default=None)


LOCKS = ".locks"  # root/.locks/<fingerprint>.lock: hidden, never mistaken for a store


@contextmanager
def lock(root, fingerprint: str, on_wait: Callable[[Path], None] = lambda path: None) -> Iterator[Path]:
    """Holds the root's lock on ``fingerprint`` for the block: one writer per content, so two runs
    extracting the same store into one root never write it at once. The second waits (``on_wait``
    is told the lock's path first) and, once the first is done, finds its store complete.

    An advisory file lock (flock, through ``filelock``): it holds between processes of one machine
    and across machines on shared filesystems that support flock (NFSv4, Lustre, CephFS). The OS
    releases it when its holder dies, so a crashed run never blocks the next one.
    """
    path = Path(root) / LOCKS / f"{fingerprint}.lock"
    held = FileLock(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        held.acquire(blocking=False)
    except Timeout:
        on_wait(path)
        held.acquire()
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        raise StoreError(f"cannot write to {root} ({os.strerror(e.errno)}): choose a writable --root") from None
    try:
        yield path
    finally:
        held.release()
