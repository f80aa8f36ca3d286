"""Every object of a store, named from the store's own metadata: nothing is listed, since plain
HTTP servers cannot list directories reliably.

The root attributes name the layer arrays; the manifests name, with their sha256 checksums, every
chunk or shard object: ``manifest/layout`` those written at creation (tokens, examples, head),
``manifest/shard-<j>`` those of shard j of every layer array. Every group and array has a zarr.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from zarr.abc.store import Store

from . import layout as L
from .codecs import get_codec
from .layout import Geometry
from .storage import object_sizes, read_many


@dataclass(frozen=True)
class Section:
    """The objects one manifest vouches for."""

    where: str  # "layout" or "shard 3 (tokens 49152-65535)"
    manifest: str  # the manifest group's path
    raw: bytes | None  # the manifest's zarr.json; None when missing (a shard never finished)

    @property
    def key(self) -> str:
        return f"{self.manifest}/zarr.json"

    @cached_property
    def checksums(self) -> dict[str, str] | None:
        """{object key: sha256}, or None when the manifest is missing or torn."""
        try:
            return json.loads(self.raw)["attributes"]["checksums"] if self.raw is not None else None
        except (ValueError, KeyError):
            return None


def sections(store: Store, attrs: dict) -> list[Section]:
    """The layout section, then one per shard, their manifests read in one concurrent request."""
    geometry = Geometry(attrs["n_tokens"], attrs["chunk_tokens"], attrs["shard_tokens"])
    labels = [("layout", L.LAYOUT_MANIFEST)]
    labels += [(f"shard {j} (tokens {lo}-{hi - 1})", L.shard_manifest(j))
               for j in range(geometry.n_shards) for lo, hi in [geometry.shard_range(j)]]
    raws = read_many(store, [f"{path}/zarr.json" for _, path in labels])
    return [Section(where, path, raw) for (where, path), raw in zip(labels, raws)]


def array_path(chunk_key: str) -> str:
    """``layers/3/codes/c/2/0`` -> ``layers/3/codes``."""
    return chunk_key.split("/c/")[0]


def metadata_keys(attrs: dict, found: list[Section]) -> list[str]:
    """The zarr.json of every group and array except the root and the manifests themselves."""
    parts = get_codec(attrs["codec"]).parts()
    arrays = {L.OFFSETS, L.META, L.INPUT_IDS, L.LOSS_MASK}
    arrays |= {L.layer_path(k, part) for k in attrs["layers"] for part in parts}
    arrays |= {array_path(key) for section in found for key in section.checksums or {}}
    groups = {"/".join(a.split("/")[:i]) for a in arrays for i in range(1, a.count("/") + 1)}
    return sorted(f"{node}/zarr.json" for node in arrays | groups | {L.HEAD, "manifest"})


def objects(attrs: dict, found: list[Section]) -> list[str]:
    """Every object key of the store as far as its manifests tell (all of them once complete)."""
    chunks = [key for section in found for key in sorted(section.checksums or {})]
    manifests = [section.key for section in found if section.raw is not None]
    return ["zarr.json", *metadata_keys(attrs, found), *manifests, *chunks]


def sizes(store: Store, attrs: dict, found: list[Section]) -> dict[str, int]:
    """{object key: bytes} of every object."""
    keys = objects(attrs, found)
    return dict(zip(keys, object_sizes(store, keys)))


@dataclass(frozen=True)
class Footprint:
    """A store's bytes by what they hold: the hidden states (``layers/``), the frozen head
    (``head/``), the rest (token layout, examples' metadata, manifests, zarr metadata) and the
    backbone's top blocks (``blocks/``, when kept). What ``extract`` estimates and reports and
    ``featurestore info`` shows, in the same words."""

    hidden: float
    head: float
    rest: float
    blocks: float = 0.0

    @classmethod
    def of(cls, sizes: dict[str, int]) -> Footprint:
        """The footprint of a store's ``{object key: bytes}`` (see :func:`sizes`)."""
        part = lambda prefix: sum(n for key, n in sizes.items() if key.startswith(prefix))
        hidden, head, blocks = part("layers/"), part(f"{L.HEAD}/"), part(f"{L.BLOCKS}/")
        return cls(hidden, head, sum(sizes.values()) - hidden - head - blocks, blocks)

    @classmethod
    def measure(cls, store: Store, attrs: dict) -> Footprint:
        """The footprint of the store in ``store`` (its root attributes ``attrs``), from its manifests."""
        return cls.of(sizes(store, attrs, sections(store, attrs)))

    @property
    def total(self) -> float:
        return self.hidden + self.head + self.rest + self.blocks

    def size(self) -> str:
        """``161.5 MB: hidden states 89.2 MB, frozen head 72.2 MB, tokens and metadata 0.1 MB``."""
        blocks = f"top blocks {human_bytes(self.blocks)}, " if self.blocks else ""
        return (f"{human_bytes(self.total)}: hidden states {human_bytes(self.hidden)}, frozen head "
                f"{human_bytes(self.head)}, {blocks}tokens and metadata {human_bytes(self.rest)}")

    def per_token(self, n_tokens: int, n_layers: int) -> str:
        """Bytes per token of the hidden states (and per stored layer), then of the whole store."""
        n = max(n_tokens, 1)
        return (f"{self.hidden / n:,.0f} of hidden states ({self.hidden / n / max(n_layers, 1):,.0f} per layer); "
                f"{self.total / n:,.0f} of the whole store")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB'; whole bytes below 1 KB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""
