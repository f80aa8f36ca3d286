"""The backbone a store was extracted from, reloaded exactly: for evaluation, ``SideModel``, the head
check, and the start of a side network made of the backbone's own top blocks."""

from __future__ import annotations

from extract.provenance import BackboneInfo
from featurestore.errors import UserError


class BackboneError(UserError, ValueError):
    """The backbone found is not the one the store was extracted from; the message says what differs."""


def reload_backbone(model: BackboneInfo, device: str):
    """The backbone exactly as extracted, or a BackboneError naming what differs."""
    from extract.backbones import resolve_backbone, same_backbone  # transformers: only where a backbone is loaded

    source = resolve_backbone(model.id, quantization=model.quantization, dtype=model.dtype, device=device)
    differences = same_backbone(source.info, model.to_json())
    if differences:
        raise BackboneError(f"the backbone found at {model.id} differs from the one the store was extracted from "
                        f"({', '.join(differences)}); evaluate with the same weights, quantization and dtype")
    return source.load()
