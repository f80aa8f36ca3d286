"""The frozen head: what turns a backbone's final hidden state into logits, exported as float32
arrays and a JSON-able config so that training and the store need no backbone. What differs between
families (norm names, projections, logit multipliers) comes from :mod:`.families`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..errors import BackboneError
from .families import Family


def export_head(model: PreTrainedModel, family: Family) -> tuple[dict[str, np.ndarray], dict]:
    """Everything between the final hidden state h_L and the logits, as float32 arrays and a
    JSON-able config (their meaning: :mod:`featurestore.head`): "lm_head.weight" (V, d') and optional
    "lm_head.bias", "projection.weight" (d', d) (OPT-350m's project_out), {"logit_scale",
    "logit_softcap", "tied"}, and the final norm that produced h_L, for reference: "norm.weight",
    "norm.bias" when it has them and {"norm": {"type": "rms"|"layer", "eps", "weight_offset",
    "affine"}} (None: no final norm)."""
    text_config = model.config.get_text_config()
    decoder = model.get_decoder()
    norm, projection = family.norm_of(decoder), family.projection_of(decoder)
    lm_head = model.get_output_embeddings()
    arrays = {"lm_head.weight": _numpy(dense_weight(lm_head))}
    if isinstance(lm_head.bias, Tensor):
        arrays["lm_head.bias"] = _numpy(lm_head.bias)
    if projection is not None:
        arrays["projection.weight"] = _numpy(dense_weight(projection))
    if isinstance(getattr(norm, "weight", None), Tensor):
        arrays["norm.weight"] = _numpy(norm.weight)
    if isinstance(getattr(norm, "bias", None), Tensor):
        arrays["norm.bias"] = _numpy(norm.bias)
    config = {
        "norm": None if norm is None else _norm_config(norm, text_config.hidden_size, lm_head.weight.device),
        "logit_scale": float(family.logit_scale(text_config)),
        "logit_softcap": getattr(text_config, "final_logit_softcapping", None),
        "tied": lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr(),
    }
    return arrays, config


def _norm_config(norm: nn.Module, width: int, device: torch.device) -> dict:
    """type, eps, weight offset and affinity of the final norm, found by running the norm, not by
    trusting class names: RMS or layer norm, multiplying by weight or (Gemma) 1 + weight, or by
    nothing (OLMo's norm has no weight)."""
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    affine = isinstance(weight, Tensor)
    gain = weight.detach().float() if affine else 1.0
    shift = bias.detach().float() if isinstance(bias, Tensor) else 0.0
    dtype = weight.dtype if affine else torch.float32
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-5)))
    probe = torch.randn(8, width, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        actual = norm(probe.to(dtype)).float()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    for kind in ("rms", "layer"):
        centred = probe - probe.mean(-1, keepdim=True) if kind == "layer" else probe
        normed = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
        for offset in (0.0, 1.0) if affine else (0.0,):
            if torch.allclose(actual, normed * (offset + gain) + shift, atol=tolerance, rtol=tolerance):
                return {"type": kind, "eps": eps, "weight_offset": offset, "affine": affine}
    raise BackboneError(f"final norm {type(norm).__name__} is neither an RMSNorm nor a LayerNorm; not supported")


def dense_weight(module: nn.Module) -> Tensor:
    """A module's weight, dequantised if bitsandbytes quantised it (it leaves lm_head alone by default)."""
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    return dequantize_bnb_weight(module.weight, getattr(module, "state", None))


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
