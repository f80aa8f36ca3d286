"""The backbone a store was extracted from, reloaded exactly: for evaluation, ``SideModel`` and
the head check alike."""

from __future__ import annotations

from extract.backbones import resolve_backbone, same_backbone
from extract.provenance import BackboneInfo
from featurestore.errors import UserError


class EvalError(UserError, ValueError):
    """A checkpoint, store or backbone that cannot be used as asked (evaluation, ``SideModel``, the head
    check); the message says why."""


def reload_backbone(model: BackboneInfo, device: str):
    """The backbone exactly as extracted, or an EvalError naming what differs."""
    source = resolve_backbone(model.id, quantization=model.quantization, dtype=model.dtype, device=device)
    differences = same_backbone(source.info, model.to_json())
    if differences:
        raise EvalError(f"the backbone found at {model.id} differs from the one the store was extracted from "
                        f"({', '.join(differences)}); evaluate with the same weights, quantization and dtype")
    return source.load()
