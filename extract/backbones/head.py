"""The frozen head: what turns a backbone's final hidden state into logits, exported as float32
arrays and a JSON-able config so that training and the store need no backbone."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..errors import BackboneError


def export_head(model: PreTrainedModel, architecture: str) -> tuple[dict[str, np.ndarray], dict]:
    """The frozen final norm and LM head as float32 arrays ("norm.weight" (d,), "lm_head.weight"
    (V, d), optional "norm.bias", "lm_head.bias") and their JSON-able config: {"norm": {"type":
    "rms"|"layer", "eps", "weight_offset"}, "logit_softcap", "tied"}. logits = softcap(lm_head(h_L)),
    where h_L is already normed; the norm is for side networks that produce their own h."""
    text_config = model.config.get_text_config()
    for unsupported in ("logit_scale", "logits_scaling"):
        if getattr(text_config, unsupported, None) not in (None, 1, 1.0):
            raise BackboneError(f"{architecture} scales its logits ({unsupported}); not supported")
    norm = _final_norm(model.get_decoder())
    lm_head = model.get_output_embeddings()
    arrays = {"norm.weight": _numpy(norm.weight), "lm_head.weight": _numpy(_dense_weight(lm_head))}
    if getattr(norm, "bias", None) is not None:
        arrays["norm.bias"] = _numpy(norm.bias)
    if getattr(lm_head, "bias", None) is not None:
        arrays["lm_head.bias"] = _numpy(lm_head.bias)
    config = {
        "norm": _norm_config(norm),
        "logit_softcap": getattr(text_config, "final_logit_softcapping", None),
        "tied": lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr(),
    }
    return arrays, config


def _final_norm(decoder: nn.Module) -> nn.Module:
    for name in ("norm", "final_layernorm", "ln_f", "final_norm"):
        if isinstance(getattr(decoder, name, None), nn.Module):
            return getattr(decoder, name)
    raise BackboneError(f"cannot find the final norm of {type(decoder).__name__}; not supported")


def _norm_config(norm: nn.Module) -> dict:
    """type, eps and weight offset of the final norm. The offset (Gemma's RMSNorm multiplies by
    1 + weight) is found by running the norm, not by trusting class names."""
    if isinstance(norm, nn.LayerNorm):
        return {"type": "layer", "eps": float(norm.eps), "weight_offset": 0.0}
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    weight = norm.weight.detach().float()
    probe = torch.randn(8, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device)
    with torch.inference_mode():
        actual = norm(probe.to(norm.weight.dtype)).float()
    normed = probe * torch.rsqrt(probe.pow(2).mean(-1, keepdim=True) + eps)
    tolerance = 1e-4 if norm.weight.dtype == torch.float32 else 5e-2
    for offset in (0.0, 1.0):
        if torch.allclose(actual, normed * (offset + weight), atol=tolerance, rtol=tolerance):
            return {"type": "rms", "eps": eps, "weight_offset": offset}
    raise BackboneError(f"final norm {type(norm).__name__} is neither an RMSNorm nor a LayerNorm; not supported")


def _dense_weight(linear: nn.Module) -> Tensor:
    """A linear layer's weight, dequantised if bitsandbytes quantised it (it leaves lm_head alone by default)."""
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    return dequantize_bnb_weight(linear.weight, getattr(linear, "state", None))


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
