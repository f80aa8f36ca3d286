"""Re-checking every object of a store against the checksums its writer recorded."""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import sections
from .storage import digest, open_store, read_many, root_attrs

WINDOW = 16  # objects read at once: concurrent requests over a network, bounded memory


@dataclass(frozen=True)
class Problem:
    where: str  # "shard 3 (tokens 49152-65535)" or "layout"
    key: str
    what: str  # "checksum mismatch", "missing object", "missing manifest"

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.what}"


def verify(location, *, progress=None, cache_dir: str | None = None) -> list[Problem]:
    """Every problem found; an empty list means every recorded checksum matches.

    ``progress(done, total)`` is told how many objects are checked so far, out of how many."""
    store = open_store(location, cache_dir=cache_dir)
    problems: list[Problem] = []
    checks = []
    for section in sections(store, root_attrs(store)):
        if section.checksums is None:
            problems.append(Problem(section.where, section.manifest, "missing manifest (shard never finished)"))
        checks += [(section.where, key, expected) for key, expected in sorted((section.checksums or {}).items())]
    for start in range(0, len(checks), WINDOW):
        window = checks[start : start + WINDOW]
        for (where, key, expected), data in zip(window, read_many(store, [key for _, key, _ in window])):
            if data is None:
                problems.append(Problem(where, key, "missing object"))
            elif digest(data) != expected:
                problems.append(Problem(where, key, "checksum mismatch"))
        if progress:
            progress(start + len(window), len(checks))
    return problems
