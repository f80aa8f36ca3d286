"""Which weights computed a store: the hash of a model's weight files, each file hashed once and
remembered in a small cache keyed by path, size and mtime."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import BackboneError


def cache_root() -> Path:
    """Where converted models and file hashes are kept: $LADDER_CACHE_DIR, else ~/.cache/ladder-cache."""
    return Path(os.environ.get("LADDER_CACHE_DIR") or "~/.cache/ladder-cache").expanduser()


def file_sha256(path: Path) -> str:
    """sha256 of a file's contents, remembered in <cache root>/hashes.json under its absolute path,
    size and mtime, so a multi-GB model is hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    hashes_file = cache_root() / "hashes.json"
    known = _read_json(hashes_file).get(str(path), {})
    if {k: known.get(k) for k in stamp} == stamp:
        return known["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    # Re-read, since another process may have added entries meanwhile; forget files that are gone.
    hashes = {name: entry for name, entry in _read_json(hashes_file).items() if Path(name).exists()}
    hashes[str(path)] = {**stamp, "sha256": digest.hexdigest()}
    _write_json_atomically(hashes_file, hashes)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_json_atomically(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(content, indent=1, sort_keys=True))
    os.replace(temporary, path)


def weight_files(directory: Path) -> list[Path]:
    """The files holding a Hugging Face directory's weights, as transformers would load them."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (directory / index).is_file():
            names = set(json.loads((directory / index).read_text())["weight_map"].values())
            return sorted(directory / name for name in names)
        if (directory / single).is_file():
            return [directory / single]
    raise BackboneError(f"{directory} has no model.safetensors (or index); save the model with save_pretrained")


def weights_hash(directory: Path) -> str:
    """sha256 over the sorted (file name, file sha256) pairs of a directory's weight files."""
    lines = "".join(f"{path.name}\t{file_sha256(path)}\n" for path in weight_files(directory))
    return hashlib.sha256(lines.encode()).hexdigest()
