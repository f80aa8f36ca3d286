"""A side network made of the backbone's own top blocks: it starts as exactly the backbone (its blocks
copied from the store, or once from the reloaded backbone when the store lacks them), then trains from
the store like any side network."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.run import extract
from featurestore import FeatureStore
from train_side import checkpoint
from train_side.cli import main
from train_side.config import LR, DataConfig, OptimConfig
from train_side.network.model import SideConfig, SideConfigError, SideNetwork
from train_side.training import train as train_module
from train_side.training.train import RunSpec, backbone_dims, recipe, top_blocks, train


@pytest.mark.parametrize("stored", [2, 0], ids=["blocks-from-the-store", "backbone-reloaded"])
def test_a_top_side_network_starts_as_the_backbones_top_blocks_and_trains(tmp_path, tiny_llama, monkeypatch, stored):
    store = FeatureStore.open(extract(str(tiny_llama), limit=8, root=tmp_path / "s", codec="fp32", top_blocks=stored,
                                      progress=False).store)
    if stored:  # the store holds them: no backbone is loaded
        monkeypatch.setattr(train_module, "reload_backbone", lambda *a, **k: pytest.fail("the backbone was loaded"))
    L_top = store.attrs["model"]["n_layers"]
    [spec], start = top_blocks(store, [RunSpec.at(tmp_path / "top", SideConfig(**backbone_dims(store), kind="top",
                                                                              delta=1))])
    side = SideNetwork(spec.side)
    start(side)
    example = store.example(0, layers=[L_top - 1, L_top])
    with torch.no_grad():
        y = side({L_top - 1: torch.from_numpy(example.hidden[L_top - 1])[None]})[0]
    torch.testing.assert_close(y, torch.from_numpy(example.hidden[L_top]), atol=1e-4, rtol=1e-4)
    run = train(store, tmp_path / "run", side={"kind": "top", "delta": 1}, optim=OptimConfig(lr=1e-3),
                data=DataConfig(epochs=2, token_budget=256, val_fraction=0.25), device="cpu", progress=False)
    assert run.side.kind == "top" and run.side.heads == spec.side.heads and np.isfinite(run.val_loss)
    assert checkpoint.load_side(tmp_path / "run").config == run.side


def test_a_store_with_fewer_blocks_than_delta_reloads_the_backbone_for_them(tmp_path, tiny_llama):
    store = FeatureStore.open(extract(str(tiny_llama), limit=8, root=tmp_path / "s", codec="fp32", top_blocks=1,
                                      progress=False).store)
    [spec], start = top_blocks(store, [RunSpec.at(tmp_path / "top", SideConfig(**backbone_dims(store), kind="top",
                                                                              delta=2))])
    side = start(SideNetwork(spec.side))
    L_top = store.attrs["model"]["n_layers"]
    example = store.example(0, layers=[L_top - 2, L_top])
    with torch.no_grad():
        y = side({L_top - 2: torch.from_numpy(example.hidden[L_top - 2])[None]})[0]
    torch.testing.assert_close(y, torch.from_numpy(example.hidden[L_top]), atol=1e-4, rtol=1e-4)


def test_the_default_is_the_stores_top_blocks_else_the_ladder_each_kind_with_its_own_lr(tmp_path, tiny_llama):
    def store(top_blocks):
        return FeatureStore.open(extract(str(tiny_llama), limit=8, root=tmp_path / f"s{top_blocks}", codec="fp32",
                                         top_blocks=top_blocks, progress=False).store)

    with_blocks, without = store(2), store(0)
    assert recipe(with_blocks, {}) == {"kind": "top", "delta": 2}  # all it holds: fewer than 8
    assert recipe(without, {}) == {"kind": "ladder"}
    assert recipe(with_blocks, {"every": 2})["kind"] == "ladder"  # a Ladder setting means the Ladder
    assert recipe(with_blocks, {}, swept={"reduction": [2, 4]})["kind"] == "ladder"
    assert recipe(with_blocks, {"kind": "xladder"}) == {"kind": "xladder"}
    result = CliRunner().invoke(main, ["train", with_blocks.location, "--out", str(tmp_path / "run"), "--epochs", "1",
                                       "--token-budget", "256", "--val-fraction", "0.25", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "kind: top, the backbone's top 2 blocks kept in the store" in result.output
    saved = checkpoint.load_config(tmp_path / "run")
    assert (saved["side"]["kind"], saved["side"]["delta"], saved["optim"]["lr"]) == ("top", 2, LR["top"])
    refused = CliRunner().invoke(main, ["train", with_blocks.location, "--out", str(tmp_path / "x"), "--kind", "xladder",
                                        "--every", "2"])  # a Ladder setting is refused, not dropped
    assert refused.exit_code == 1 and "taps and every are Ladder options" in refused.output


def test_lora_on_the_top_blocks_starts_as_the_backbone_and_trains_only_the_adapters(tmp_path, tiny_llama):
    store = FeatureStore.open(extract(str(tiny_llama), limit=8, root=tmp_path / "s", codec="fp32", top_blocks=1,
                                      progress=False).store)
    L_top = store.attrs["model"]["n_layers"]
    [spec], start = top_blocks(store, [RunSpec.at(tmp_path / "top", SideConfig(**backbone_dims(store), kind="top",
                                                                              delta=1, lora_rank=2))])
    side = start(SideNetwork(spec.side))
    example = store.example(0, layers=[L_top - 1, L_top])
    with torch.no_grad():
        y = side({L_top - 1: torch.from_numpy(example.hidden[L_top - 1])[None]})[0]
    torch.testing.assert_close(y, torch.from_numpy(example.hidden[L_top]), atol=1e-4, rtol=1e-4)

    run = train(store, tmp_path / "run", side={"kind": "top", "delta": 1, "lora_rank": 2}, optim=OptimConfig(lr=1e-2),
                data=DataConfig(epochs=2, token_budget=256, val_fraction=0.25), device="cpu", progress=False)
    model = checkpoint.load_side(tmp_path / "run")
    blocks, _ = store.top_blocks()
    qkv = np.concatenate([blocks[f"layers.{L_top - 1}.self_attn.{x}_proj.weight"] for x in "qkv"]).astype(np.float32)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, torch.from_numpy(qkv))  # frozen: the backbone's
    assert model.blocks[0].attn.qkv.lora_b.abs().sum() > 0  # the adapters trained
    adapters = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert run.model.n_parameters() == adapters == checkpoint.load_config(tmp_path / "run")["n_parameters"]
    with pytest.raises(SideConfigError, match="lora_rank"):
        SideConfig(**backbone_dims(store), kind="ladder", lora_rank=2)
