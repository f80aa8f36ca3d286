"""Faults to inject into stores: flipped, truncated and deleted objects, and edited metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from featurestore import FeatureStore


def flip(path: Path, at: float = 0.5) -> None:
    """Flips one bit of the byte at fraction ``at`` of the file."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete(path: Path) -> None:
    path.unlink()


def edit_json(path: Path, change) -> None:
    node = json.loads(path.read_text())
    change(node)
    path.write_text(json.dumps(node, indent=2))


def read_everything(location, **open_kwargs) -> dict:
    """Everything a training run reads: offsets, meta, head and every token of every layer."""
    store = FeatureStore.open(location, **open_kwargs)
    weights, config = store.head()
    batch = store.examples(range(store.n_examples))
    return {"offsets": store.offsets, "meta": store.meta, "head": weights, "input_ids": batch.input_ids,
            "hidden": batch.hidden}


def same(a: dict, b: dict) -> bool:
    return (np.array_equal(a["offsets"], b["offsets"]) and a["meta"] == b["meta"]
            and all(np.array_equal(a["head"][k], b["head"][k]) for k in a["head"])
            and np.array_equal(a["input_ids"], b["input_ids"])
            and all(np.array_equal(a["hidden"][k], b["hidden"][k]) for k in a["hidden"]))
