"""Re-checking every object of a store against the checksums its writer recorded."""

from __future__ import annotations

from dataclasses import dataclass

import zarr

from . import layout as L
from .layout import Geometry
from .storage import digest, open_store, read_bytes, read_manifest


@dataclass(frozen=True)
class Problem:
    where: str  # "shard 3 (tokens 49152-65535)" or "layout"
    key: str
    what: str  # "checksum mismatch", "missing object", "missing manifest"

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.what}"


def verify(location, *, progress=None, cache_dir: str | None = None) -> list[Problem]:
    """Every problem found; an empty list means every recorded checksum matches.

    ``progress`` is called with the number of objects checked so far (for a progress bar)."""
    store = open_store(location, cache_dir=cache_dir)
    attrs = dict(zarr.open_group(store, mode="r").attrs)
    geometry = Geometry(attrs["n_tokens"], attrs["chunk_tokens"], attrs["shard_tokens"])
    problems: list[Problem] = []
    sections = [("layout", L.LAYOUT_MANIFEST)]
    sections += [(f"shard {j} (tokens {lo}-{hi - 1})", L.shard_manifest(j))
                 for j in range(geometry.n_shards) for lo, hi in [geometry.shard_range(j)]]
    checked = 0
    for where, manifest_key in sections:
        manifest = read_manifest(store, manifest_key)
        if manifest is None:
            problems.append(Problem(where, manifest_key, "missing manifest (shard never finished)"))
            continue
        for key, expected in sorted(manifest["checksums"].items()):
            data = read_bytes(store, key)
            if data is None:
                problems.append(Problem(where, key, "missing object"))
            elif digest(data) != expected:
                problems.append(Problem(where, key, "checksum mismatch"))
            checked += 1
            if progress:
                progress(checked)
    return problems


def count_objects(location, cache_dir: str | None = None) -> int:
    """How many objects ``verify`` will check (manifests are tiny; reads them all)."""
    store = open_store(location, cache_dir=cache_dir)
    attrs = dict(zarr.open_group(store, mode="r").attrs)
    geometry = Geometry(attrs["n_tokens"], attrs["chunk_tokens"], attrs["shard_tokens"])
    keys = [L.LAYOUT_MANIFEST] + [L.shard_manifest(j) for j in range(geometry.n_shards)]
    return sum(len(m["checksums"]) for k in keys if (m := read_manifest(store, k)))
