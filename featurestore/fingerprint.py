"""A stable hash of everything that determines a store's content."""

from __future__ import annotations

import hashlib
import json


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint(content: dict) -> str:
    """sha256 of the canonical JSON of ``content``. Key order and whitespace never matter;
    any change of a value does."""
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()
