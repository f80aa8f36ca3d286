"""The backbone's top blocks, exported so that a side network of kind ``top`` starts as them with no
backbone in memory: stored beside the head by ``extract``, or exported from a reloaded backbone.

Only Llama-style blocks are exported, since they are what the side network's block computes: RMSNorm,
rotary attention with grouped key/value heads and no biases, a SwiGLU MLP. Arrays keep the model's own
names (``layers.<b>.self_attn.q_proj.weight`` ...) plus the final norm (``norm.weight``); each is
float16 when that holds it exactly (true of weights trained in 16 bits, and half the bytes), else
float32. The config: ``first`` (the lowest block exported), the head counts, RoPE base and norm epsilon.
"""

from __future__ import annotations

import numpy as np
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import BackboneError
from .head import dense_weight

BLOCK_WEIGHTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")


def unsupported(config: PretrainedConfig) -> str | None:
    """Why this backbone's blocks are not the side network's block (None: they are), from its config."""
    c = config.get_text_config()
    rope = getattr(c, "rope_parameters", None) or {"rope_type": "default"}
    heads = c.num_attention_heads
    reasons = [
        c.model_type != "llama" and f"{c.model_type} blocks are not Llama blocks",
        rope.get("rope_type", "default") != "default" and f"RoPE scaling {rope.get('rope_type')!r}",
        (getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False)) and "biased projections",
        getattr(c, "hidden_act", "silu") != "silu" and f"activation {c.hidden_act}",
        (getattr(c, "head_dim", None) or c.hidden_size // heads) * heads != c.hidden_size and
        "a head size other than hidden_size / heads",
    ]
    return next((reason for reason in reasons if reason), None)


def stored_count(config: PretrainedConfig, wanted: int) -> int:
    """How many top blocks a store of this backbone holds when ``wanted`` are asked for: none when
    its blocks are not Llama-style (a top side network then refuses, saying why)."""
    return 0 if unsupported(config) else min(wanted, config.get_text_config().num_hidden_layers)


def export_top_blocks(model: PreTrainedModel, count: int) -> tuple[dict[str, np.ndarray], dict]:
    """The top ``count`` blocks and the final norm of a Llama-style model, dequantised if bitsandbytes
    holds them in 4 or 8 bits, as numpy arrays and a JSON-able config (see the module docstring)."""
    reason = unsupported(model.config)
    if reason:
        raise BackboneError(f"a top side network starts as the backbone's own blocks, and these are not Llama "
                            f"blocks ({reason}); train --kind ladder or xladder instead")
    c = model.config.get_text_config()
    decoder, first = model.get_decoder(), c.num_hidden_layers - count
    arrays = {"norm.weight": _exact(dense_weight(decoder.norm))}
    for b in range(first, c.num_hidden_layers):
        for name in BLOCK_WEIGHTS:
            arrays[f"layers.{b}.{name}.weight"] = _exact(dense_weight(decoder.layers[b].get_submodule(name)))
    rope = getattr(c, "rope_parameters", None) or {"rope_theta": getattr(c, "rope_theta", 10000.0)}
    config = {"first": first, "n_heads": c.num_attention_heads, "n_kv_heads": c.num_key_value_heads,
              "rope_theta": float(rope["rope_theta"]), "norm_eps": float(c.rms_norm_eps)}
    return arrays, config


def _exact(weight) -> np.ndarray:
    """float16 when it holds the weight exactly, else float32."""
    weight = weight.detach().float().cpu().numpy()
    half = weight.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), weight) else weight
