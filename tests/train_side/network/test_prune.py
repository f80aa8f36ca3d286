"""LST's pruned initialisation: at full width a side block is its backbone block."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from extract.backbones.blocks import export_top_blocks
from train_side.network.model import KVCache, SideConfig, SideConfigError, SideNetwork
from train_side.network.prune import copy_top_blocks, init_from_backbone, pruned_settings, source_blocks, top_settings


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=500.0, rms_norm_eps=1e-5)
    return LlamaForCausalLM(config).eval()


def side_config(**settings) -> SideConfig:
    return SideConfig(n_layers=3, hidden_size=64, intermediate_size=128, **pruned_settings(tiny_llama()), **settings)


def test_at_full_width_each_side_block_computes_its_backbone_block():
    backbone = tiny_llama()
    side = init_from_backbone(SideNetwork(side_config(reduction=1)), backbone)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        hidden = backbone(ids, output_hidden_states=True).hidden_states  # h_0 .. h_L (h_L post-norm)
        rope = side.rope(side.positions(2, 9, 0, None))
        for block, source in zip(side.blocks, source_blocks(side)):
            if source + 1 < 3:  # h_L is after the final norm: compare the blocks whose output is raw
                torch.testing.assert_close(block(hidden[source], rope, None, None, 0), hidden[source + 1],
                                           atol=1e-5, rtol=1e-4)


def test_pruned_side_network_starts_from_the_backbone_stream_and_trains():
    backbone = tiny_llama()
    side = init_from_backbone(SideNetwork(side_config(reduction=2, every=1)), backbone)
    assert side.config.width == 32 and source_blocks(side) == [0, 1, 2]
    kept = side.down[1].proj.weight  # a selection of 32 channels: one 1 per row
    assert torch.equal(kept.sum(1), torch.ones(32)) and len(set(kept.argmax(1).tolist())) == 32
    hidden = {k: torch.randn(2, 5, 64) for k in side.config.inputs}
    side(hidden).square().mean().backward()
    assert all(p.grad is not None for p in side.blocks.parameters())


def test_xladder_repeats_its_tapped_blocks():
    side = SideNetwork(SideConfig(n_layers=3, hidden_size=64, intermediate_size=128, kind="xladder", delta=2,
                                  n_heads=4))
    assert source_blocks(side) == [1, 2, 1, 2]


def test_refuses_head_counts_other_than_the_backbones():
    with pytest.raises(SideConfigError, match="n_heads=4"):
        default_heads = SideConfig(n_layers=3, hidden_size=64, intermediate_size=128, reduction=2)  # 1 head
        init_from_backbone(SideNetwork(default_heads), tiny_llama())


@pytest.mark.parametrize("delta", [1, 2])
def test_top_blocks_start_as_the_backbone_from_their_input_to_its_output(delta):
    backbone = tiny_llama()
    weights, blocks_config = export_top_blocks(backbone, delta)
    config = SideConfig(n_layers=3, hidden_size=64, intermediate_size=128, kind="top", delta=delta,
                        **top_settings(blocks_config))
    side = copy_top_blocks(SideNetwork(config), weights)
    assert config.inputs == (3 - delta,) and config.width == 64 and config.kv_heads == 2
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        hidden = backbone(ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(side({3 - delta: hidden[3 - delta]}), hidden[3], atol=1e-5, rtol=1e-4)
        # generation: a prompt, then the rest through the KV cache, gives the same states
        cache, mask, h = KVCache(), torch.ones(2, 9, dtype=torch.long), hidden[3 - delta]
        prompt = side({3 - delta: h[:, :5]}, cache, mask[:, :5])
        rest = side({3 - delta: h[:, 5:]}, cache, mask)
        torch.testing.assert_close(torch.cat([prompt, rest], 1), hidden[3], atol=1e-5, rtol=1e-4)


def test_top_blocks_refuse_ladder_taps():
    with pytest.raises(SideConfigError, match="Ladder options"):
        SideConfig(n_layers=3, hidden_size=64, intermediate_size=128, kind="top", every=2)
