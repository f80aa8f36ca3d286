"""Re-checking every object of a store against the checksums its writer recorded: the chunk objects
against their manifests, the metadata documents (root attributes, every zarr.json, the manifests)
against the digests recorded on completion, and the example offsets for consistency."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError
from .integrity import INTEGRITY, _root_digest, offsets_problem
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
    attrs = root_attrs(store)
    problems: list[Problem] = []
    checks = []
    for section in sections(store, attrs):
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
    return problems + _metadata(store, attrs) + _offsets(location, cache_dir, attrs)


def _metadata(store, attrs: dict) -> list[Problem]:
    """The root attributes and every metadata document against the digests recorded on completion
    (none for a store written before they were)."""
    record = attrs.get(INTEGRITY)
    if record is None:
        return []
    if not isinstance(record, dict) or record.get("root") != _root_digest(attrs):
        return [Problem("metadata", "zarr.json", "root attributes changed since completion (digest mismatch)")]
    documents = record.get("documents") or {}
    problems = []
    for (key, expected), data in zip(documents.items(), read_many(store, list(documents))):
        if data is None:
            problems.append(Problem("metadata", key, "missing object"))
        elif digest(data) != expected:
            problems.append(Problem("metadata", key, "changed since completion (digest mismatch)"))
    return problems


def _offsets(location, cache_dir, attrs: dict) -> list[Problem]:
    """Whether the example offsets read back (checked) and fit the token count."""
    from .reader import FeatureStore

    try:
        store = FeatureStore.open(location, allow_incomplete=True, cache_dir=cache_dir)
        offsets = store._whole("examples/offsets")
    except UserError as e:
        return [Problem("metadata", "examples/offsets", str(e).split(";")[0])]
    what = offsets_problem(offsets, attrs.get("n_examples", -1), attrs.get("n_tokens", -1))
    return [Problem("metadata", "examples/offsets", f"inconsistent: it {what}")] if what else []
