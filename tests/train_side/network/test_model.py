import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from train_side.network.loss import next_token_loss
from train_side.network.model import FrozenHead, KVCache, NormLinear, RMSNorm, SideConfig, SideConfigError, SideNetwork

L, D, FF, V = 4, 32, 64, 50  # backbone blocks, width, MLP width, vocabulary


def config(**overrides) -> SideConfig:
    return SideConfig(**{"n_layers": L, "hidden_size": D, "intermediate_size": FF, "reduction": 2, "n_heads": 2,
                         **overrides})  # side width 16, two heads of 8


def side_network(**overrides) -> SideNetwork:
    """A network as it might be after training: up and the gates are no longer zero, so every path
    (blocks, ladders, mix) shows in y."""
    torch.manual_seed(0)
    net = SideNetwork(config(**overrides))
    with torch.no_grad():
        net.up.weight.normal_(0, 0.3)
        net.alpha.normal_(0, 0.1)
        if net.config.mix:
            net.beta.normal_(0, 1.0)
    return net


def hidden_states(cfg: SideConfig, B: int, T: int, seed: int) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(B, T, D, generator=g) for k in cfg.inputs}


def head(bias: bool = False, softcap: float | None = None) -> FrozenHead:
    rng = np.random.default_rng(0)
    weights = {"lm_head.weight": rng.standard_normal((V, D), dtype=np.float32),
               "norm.weight": np.ones(D, np.float32)}
    if bias:
        weights["lm_head.bias"] = rng.standard_normal(V, dtype=np.float32)
    return FrozenHead(weights, {"logit_softcap": softcap})


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, initial, ladders, inputs", [
    ({}, 0, (1, 4), (0, 1, 4)),  # every 3rd block by default, counted down from L
    ({"every": 1}, 0, (1, 2, 3, 4), (0, 1, 2, 3, 4)),
    ({"taps": [1, 2]}, 0, (1, 2), (0, 1, 2, 4)),  # h_L is read for the mix
    ({"taps": [1, 2], "mix": False}, 0, (1, 2), (0, 1, 2)),
    ({"every": 2}, 0, (2, 4), (0, 2, 4)),
    ({"every": 2, "n_layers": 5}, 0, (1, 3, 5), (0, 1, 3, 5)),  # counted down from L: L is always a tap
    ({"kind": "xladder", "delta": 2}, 2, (3, 4), (2, 3, 4)),
    ({"kind": "xladder", "delta": 4}, 0, (1, 2, 3, 4), (0, 1, 2, 3, 4)),
])
def test_config_names_the_hidden_states_it_reads(overrides, initial, ladders, inputs):
    cfg = config(**overrides)
    assert (cfg.initial, cfg.ladders, cfg.inputs) == (initial, ladders, inputs)


@pytest.mark.parametrize("overrides, message", [
    ({"kind": "prefix"}, "kind"),
    ({"taps": []}, "taps"),
    ({"taps": [0, 2]}, "taps"),
    ({"taps": [2, 5]}, "taps"),
    ({"taps": [3, 2]}, "taps"),
    ({"taps": [2], "every": 2}, "not both"),
    ({"every": 5}, "every"),
    ({"kind": "xladder", "delta": 5}, "delta"),
    ({"kind": "xladder", "delta": 0}, "delta"),
    ({"kind": "xladder", "taps": [4]}, "Ladder options"),
    ({"reduction": 3}, "divisible"),
    ({"reduction": 0}, "positive divisor"),
    ({"side_width": 0}, "positive"),
    ({"n_heads": 0}, "heads"),
    ({"n_heads": 3}, "heads"),
    ({"n_heads": 16}, "even"),  # head size 1 cannot be rotated
    ({"gate_temperature": 0.0}, "gate_temperature"),
])
def test_config_rejects_invalid_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


@pytest.mark.parametrize("overrides", [{}, {"taps": (1, 3), "side_width": 8}, {"kind": "xladder", "delta": 1}])
def test_config_round_trips_through_json(overrides):
    cfg = config(**overrides)
    assert SideConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg


def test_default_heads_are_32_wide_and_side_widths_follow_the_reduction():
    cfg = SideConfig(n_layers=30, hidden_size=576, intermediate_size=1536)  # SmolLM2-135M, r = 4
    assert (cfg.width, cfg.heads, cfg.mlp_width) == (144, 4, 384)
    cfg = SideConfig(n_layers=30, hidden_size=576, intermediate_size=1536, side_width=144)
    assert (cfg.width, cfg.heads, cfg.mlp_width) == (144, 4, 384)


# -- parameters --------------------------------------------------------------------------------


def expected_parameters(cfg: SideConfig) -> int:
    w, m, n_ladders = cfg.width, cfg.mlp_width, len(cfg.ladders)
    downs = (1 + n_ladders) * (D + D * w)  # RMSNorm + projection each
    block = 2 * w + 4 * w * w + 3 * w * m  # two norms, qkv + out projection, SwiGLU
    return downs + n_ladders + cfg.n_blocks * block + w + w * D + (D if cfg.mix else 0)


@pytest.mark.parametrize("overrides", [{}, {"taps": [2], "mix": False}, {"kind": "xladder", "delta": 1}])
def test_parameter_count_is_exactly_the_side_network_and_is_what_gets_saved(overrides):
    net = SideNetwork(config(**overrides))
    assert net.n_parameters() == expected_parameters(net.config)
    assert sum(t.numel() for t in net.state_dict().values()) == net.n_parameters()  # no buffers saved


def test_xladder_has_the_blocks_of_a_ladder_with_twice_delta_taps_and_delta_fewer_ladder_inputs():
    delta = 2
    xladder, ladder = SideNetwork(config(kind="xladder", delta=delta)), SideNetwork(config(taps=[1, 2, 3, 4]))
    blocks = [sum(p.numel() for p in net.blocks.parameters()) for net in (xladder, ladder)]
    assert blocks[0] == blocks[1]
    # each of Ladder's delta extra ladders costs an input RMSNorm, a down projection and a gate
    w = ladder.config.width
    assert ladder.n_parameters() - xladder.n_parameters() == delta * (D + D * w + 1)


# -- forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ladder", "xladder"])
def test_at_init_gates_are_one_half_and_y_is_half_the_backbone_state(kind):
    torch.manual_seed(0)
    net = SideNetwork(config(kind=kind))
    cfg = net.config
    hidden = hidden_states(cfg, 2, 5, seed=1)
    y = net(hidden)
    assert y.shape == (2, 5, D)
    assert torch.equal(torch.sigmoid(net.alpha / cfg.gate_temperature), torch.full((len(cfg.ladders),), 0.5))
    assert torch.equal(torch.sigmoid(net.beta), torch.full((D,), 0.5))
    assert torch.equal(y, 0.5 * hidden[L])  # up starts at zero


def test_without_mix_y_is_the_side_output_alone():
    torch.manual_seed(0)
    net = SideNetwork(config(taps=[1, 2], mix=False))
    assert not hasattr(net, "beta")
    assert torch.equal(net(hidden_states(net.config, 2, 5, seed=1)), torch.zeros(2, 5, D))  # up starts at zero


@pytest.mark.parametrize("kind", ["ladder", "xladder"])
def test_each_input_is_normalised_so_massive_activations_do_not_swamp_the_side_state(kind):
    net = side_network(kind=kind, mix=False)  # the mix uses h_L as it is
    hidden = hidden_states(net.config, 2, 6, seed=1)
    scale = 10 ** (4 * torch.rand(2, 6, 1))  # per token, up to 1e4 as in the massive-activation tokens
    massive = {k: scale * h for k, h in hidden.items()}
    torch.testing.assert_close(net(massive), net(hidden), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["ladder", "xladder"])
def test_right_padding_leaves_real_positions_unchanged(kind):
    net = side_network(kind=kind)
    long, short = hidden_states(net.config, 1, 6, seed=1), hidden_states(net.config, 1, 4, seed=2)
    junk = hidden_states(net.config, 1, 2, seed=3)
    batch = {k: torch.cat([long[k], torch.cat([short[k], 1e3 * junk[k]], dim=1)]) for k in net.config.inputs}
    y = net(batch)
    torch.testing.assert_close(y[0], net(long)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(y[1, :4], net(short)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kind", ["ladder", "xladder"])
def test_cached_generation_matches_uncached_forward(kind, padded):
    """A prompt, then one token at a time with the KV cache, gives each sequence's unpadded y."""
    net = side_network(kind=kind)
    lengths = [7, 4] if padded else [7, 7]
    T, prompt = max(lengths), 4
    sequences = [hidden_states(net.config, 1, n, seed=i) for i, n in enumerate(lengths)]
    # left-pad into one batch; the hidden states under padding are junk that must not leak
    batch = {k: 1e3 * torch.randn(2, T, D) for k in net.config.inputs}
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, (seq, n) in enumerate(zip(sequences, lengths)):
        mask[b, T - n:] = 1
        for k in batch:
            batch[k][b, T - n:] = seq[k][0]

    cache = KVCache()
    steps = [(0, prompt)] + [(t, t + 1) for t in range(prompt, T)]
    ys = [net({k: h[:, start:end] for k, h in batch.items()}, cache, mask[:, :end] if padded else None)
          for start, end in steps]
    y = torch.cat(ys, dim=1)

    assert cache.length == T
    for b, (seq, n) in enumerate(zip(sequences, lengths)):
        torch.testing.assert_close(y[b, T - n:], net(seq)[0], rtol=0, atol=1e-5)


def test_left_padded_tokens_get_their_unpadded_positions_and_padding_is_never_attended():
    net = side_network()
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert net.positions(2, 2, 3, mask).tolist() == [[1, 2], [3, 4]]  # 3 cached tokens, 2 new
    allowed = net.causal_mask(2, 5, 0, mask)[:, 0].long()  # (B, T, T)
    assert allowed[0].tolist() == [[1, 0, 0, 0, 0],  # padding sees only itself: no row is fully masked
                                   [0, 1, 0, 0, 0],
                                   [0, 0, 1, 0, 0],
                                   [0, 0, 1, 1, 0],
                                   [0, 0, 1, 1, 1]]
    assert torch.equal(allowed[1], torch.ones(5, 5, dtype=torch.long).tril())
    assert torch.equal(net.causal_mask(2, 2, 3, mask)[:, 0].long(), allowed[:, 3:])


def test_a_tiny_side_network_overfits_fixed_hidden_states():
    torch.manual_seed(0)
    net = SideNetwork(config(taps=[2, 4]))
    hidden = hidden_states(net.config, 4, 16, seed=1)
    input_ids = torch.randint(V, (4, 16))
    loss_mask = torch.ones(4, 16, dtype=torch.long)
    lm_head = head()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    first = next_token_loss(net(hidden), input_ids, loss_mask, lm_head).item()
    for _ in range(200):
        loss = next_token_loss(net(hidden), input_ids, loss_mask, lm_head)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > np.log(V)  # worse than uniform: the random head is confidently wrong at init
    assert loss.item() < 0.01


def test_norm_linear_equals_rmsnorm_then_linear_in_value_and_gradient():
    torch.manual_seed(0)
    h = (torch.randn(3, 5, 16, dtype=torch.float64) * torch.logspace(0, 3, 16, dtype=torch.float64)).requires_grad_()
    g = torch.randn(16, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, W, h: NormLinear.apply(g, W, 1e-5, None, h), (g, W, h))
    norm = RMSNorm(16, 1e-5).double()
    norm.weight.data = g.detach().clone()
    expected = torch.nn.functional.linear(norm(h), W)
    assert torch.allclose(NormLinear.apply(g, W, 1e-5, None, h), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["ladder", "xladder"])
def test_recomputing_block_activations_gives_the_same_gradients(kind):
    grads = []
    for recompute in (False, True):
        net = side_network(kind=kind)
        net.recompute = recompute
        hidden = hidden_states(net.config, 2, 9, seed=3)
        next_token_loss(net(hidden), torch.arange(18).reshape(2, 9) % V, torch.ones(2, 9), head()).backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*grads))


# -- frozen head -------------------------------------------------------------------------------


def test_frozen_head_applies_bias_and_softcap_and_holds_nothing_trainable_or_saved():
    plain, capped = head(bias=True), head(bias=True, softcap=5.0)
    y = torch.randn(3, D)
    logits = y @ plain.weight.T + plain.bias
    torch.testing.assert_close(plain(y), logits)
    torch.testing.assert_close(capped(y), 5.0 * torch.tanh(logits / 5.0))
    assert capped(100 * y).abs().max() <= 5.0
    assert list(plain.parameters()) == [] and plain.state_dict() == {}
    assert plain.norm_weight.shape == (D,) and head().bias is None


def test_a_negative_reduction_is_named_as_such():
    with pytest.raises(SideConfigError, match="reduction must be a positive divisor of hidden_size 64, not -2"):
        SideConfig(n_layers=4, hidden_size=64, intermediate_size=128, reduction=-2)


def test_configs_saved_before_the_per_kind_defaults_still_load():
    # every=1 and reduction=8 were written into every config, an xLadder's included
    old = {"n_layers": 4, "hidden_size": 32, "intermediate_size": 64, "kind": "xladder", "taps": None, "every": 1,
           "delta": 2, "reduction": 8}
    cfg = SideConfig(**old)
    assert (cfg.every, cfg.reduction, cfg.width, cfg.ladders) == (None, 8, 4, (3, 4))
    ladder = SideConfig(**{**old, "kind": "ladder"})
    assert ladder.ladders == (1, 2, 3, 4)  # every block, as it was trained
