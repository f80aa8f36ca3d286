"""LST's initialisation: a side network cut from its backbone's own weights.

The LST paper starts each side block as its backbone block pruned to the side width instead of
at random. Here, for a Llama-style backbone (q/k/v/o, gate/up/down, two RMSNorms per block):

- the side width keeps the d_s residual channels C that the source blocks read and write most
  (summed squared weights), and every side block reads and writes those channels;
- attention keeps all H heads, each cut to d_s / H dimensions: evenly spaced RoPE frequency pairs,
  so that with the backbone's rope_theta the side heads rotate as the backbone's did; grouped
  key/value heads are copied to the query heads that share them;
- the MLP keeps the mlp_width neurons with the largest weights;
- each ladder's down projection starts as the selection of C from its normalised hidden state, so
  the side state begins as the backbone's own stream at those channels; ``up`` stays zero.

Side block i starts as the backbone block that computed its tap (an xLadder's ladder-less blocks
repeat its tapped ones). The backbone is needed only here, once, before training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .model import SideConfigError, SideNetwork


def source_blocks(model: SideNetwork) -> list[int]:
    """The backbone block (0-based) each side block starts as."""
    ladders = model.config.ladders
    return [ladders[i % len(ladders)] - 1 for i in range(model.config.n_blocks)]


def importance(state: dict[str, Tensor], blocks: list[int]) -> tuple[Tensor, dict[int, Tensor]]:
    """(per residual channel, per block's MLP neuron) sums of squared weights."""
    channels, neurons = 0.0, {}
    for b in set(blocks):
        w = lambda name: state[f"model.layers.{b}.{name}.weight"].float()
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            channels = channels + w(name).square().sum(0)  # columns read the stream
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            channels = channels + w(name).square().sum(1)  # rows write it
        neurons[b] = w("mlp.gate_proj").square().sum(1) * w("mlp.up_proj").square().sum(1) * \
            w("mlp.down_proj").square().sum(0)
    return channels, neurons


def pruned_settings(backbone) -> dict:
    """The SideConfig settings a pruned side network needs from its backbone (a Hugging Face
    Llama-style model): its head count and RoPE base."""
    config = backbone.config.get_text_config()
    theta = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    return {"n_heads": config.num_attention_heads, "rope_theta": float(theta["rope_theta"])}


@torch.no_grad()
def init_from_backbone(model: SideNetwork, backbone) -> SideNetwork:
    """Overwrites ``model``'s blocks, norms and ladder projections with the pruned weights of
    ``backbone`` (a Hugging Face Llama-style model, unquantised). Returns ``model``."""
    c, config = model.config, backbone.config.get_text_config()
    n_heads, n_kv_heads = config.num_attention_heads, config.num_key_value_heads
    state = backbone.state_dict()
    if c.heads != n_heads:
        raise SideConfigError(f"pruned initialisation keeps the backbone's {n_heads} heads: set n_heads={n_heads}")
    head_dim, side_head_dim = c.hidden_size // n_heads, c.width // n_heads
    if side_head_dim % 2 or (head_dim // 2) % (side_head_dim // 2):
        raise SideConfigError(f"side width {c.width} must give {n_heads} heads whose half-size divides {head_dim // 2}")
    blocks = source_blocks(model)
    channels, neurons = importance(state, blocks)
    C = channels.topk(c.width).indices.sort().values  # (d_s,)
    stride = head_dim // side_head_dim
    pairs = torch.arange(0, head_dim // 2, stride)  # kept RoPE frequency pairs (j, j + head_dim/2)
    dims = torch.cat([pairs, pairs + head_dim // 2])  # (side_head_dim,) within a head
    q_rows = torch.cat([h * head_dim + dims for h in range(n_heads)])  # (d_s,)
    group = n_heads // n_kv_heads
    kv_rows = torch.cat([(h // group) * head_dim + dims for h in range(n_heads)])
    for side, b in zip(model.blocks, blocks):
        w = lambda name: state[f"model.layers.{b}.{name}"].float()
        q = w("self_attn.q_proj.weight")[q_rows][:, C]
        k = w("self_attn.k_proj.weight")[kv_rows][:, C]
        v = w("self_attn.v_proj.weight")[kv_rows][:, C]
        side.attn.qkv.weight.copy_(torch.cat([q, k, v]))
        side.attn.proj.weight.copy_(w("self_attn.o_proj.weight")[C][:, q_rows])
        N = neurons[b].topk(c.mlp_width).indices.sort().values
        side.mlp.gate.weight.copy_(w("mlp.gate_proj.weight")[N][:, C])
        side.mlp.up.weight.copy_(w("mlp.up_proj.weight")[N][:, C])
        side.mlp.down.weight.copy_(w("mlp.down_proj.weight")[C][:, N])
        side.attn_norm.weight.copy_(w("input_layernorm.weight")[C])
        side.mlp_norm.weight.copy_(w("post_attention_layernorm.weight")[C])
    model.norm.weight.copy_(state["model.norm.weight"].float()[C])
    for down in model.down:
        down.proj.weight.zero_()
        down.proj.weight[torch.arange(c.width), C] = 1.0
    return model


def top_settings(blocks_config: dict) -> dict:
    """The SideConfig settings of a ``top`` side network (the backbone's own top blocks), from the
    config of its exported blocks (extract.backbones.blocks): heads, key/value heads, RoPE base, epsilon."""
    return {k: blocks_config[k] for k in ("n_heads", "n_kv_heads", "rope_theta", "norm_eps")}


@torch.no_grad()
def copy_top_blocks(model: SideNetwork, blocks: dict[str, np.ndarray]) -> SideNetwork:
    """Overwrites a ``top`` side network with the backbone's top blocks and final norm, exported by
    extract.backbones.blocks (from the store, or from a reloaded backbone), so that it starts as
    exactly the function from h_{L-delta} to h_L that the backbone computes."""
    c = model.config
    if c.kind != "top":
        raise SideConfigError(f"copy_top_blocks needs a side network of kind 'top', not {c.kind!r}")
    w = lambda name: torch.from_numpy(np.asarray(blocks[f"{name}.weight"], dtype=np.float32))
    for side, b in zip(model.blocks, range(c.n_layers - c.delta, c.n_layers)):
        block = lambda name: w(f"layers.{b}.{name}")
        side.attn.qkv.weight.copy_(torch.cat([block("self_attn.q_proj"), block("self_attn.k_proj"),
                                              block("self_attn.v_proj")]))
        side.attn.proj.weight.copy_(block("self_attn.o_proj"))
        side.mlp.gate.weight.copy_(block("mlp.gate_proj"))
        side.mlp.up.weight.copy_(block("mlp.up_proj"))
        side.mlp.down.weight.copy_(block("mlp.down_proj"))
        side.attn_norm.weight.copy_(block("input_layernorm"))
        side.mlp_norm.weight.copy_(block("post_attention_layernorm"))
    model.norm.weight.copy_(w("norm"))
    return model
