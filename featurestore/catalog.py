"""A root directory of stores: what is in it, and which store has a given fingerprint."""

from __future__ import annotations

from pathlib import Path

from .storage import open_store, read_json
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
