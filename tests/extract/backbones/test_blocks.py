"""The backbone's top blocks in the store: exact copies of its weights, recorded in the provenance,
refused (with the reason) for blocks that are not the side network's Llama block."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from extract.backbones import BackboneError
from extract.backbones.blocks import export_top_blocks
from extract.run import extract
from featurestore import FeatureStore
from tests.models import L


def extract_tiny(model, root, **settings):
    return extract(str(model), root=root, limit=3, codec="fp32", progress=False, **settings)


def test_a_store_holds_the_backbones_top_blocks_exactly(tiny_llama, tmp_path):
    store = FeatureStore.open(extract_tiny(tiny_llama, tmp_path, top_blocks=2).store)
    weights, config = store.top_blocks()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    assert store.attrs["top_blocks"] == 2 and config["first"] == L - 2
    assert config["n_heads"] == model.config.num_attention_heads
    assert config["n_kv_heads"] == model.config.num_key_value_heads
    expected = {name.removeprefix("model."): tensor for name, tensor in model.state_dict().items()
                if name == "model.norm.weight" or name.startswith((f"model.layers.{L - 2}.", f"model.layers.{L - 1}."))}
    assert set(weights) == set(expected)
    for name, tensor in expected.items():
        np.testing.assert_array_equal(weights[name].astype(np.float32), tensor.numpy())


def test_the_blocks_are_in_the_fingerprint_and_none_keeps_the_stores_of_before(tiny_llama, tmp_path):
    with_blocks = extract_tiny(tiny_llama, tmp_path, top_blocks=1)
    without = extract_tiny(tiny_llama, tmp_path, top_blocks=0)
    assert with_blocks.fingerprint != without.fingerprint
    store = FeatureStore.open(without.store)
    assert store.top_blocks() is None and "top_blocks" not in store.attrs


def test_more_blocks_than_the_backbone_has_stores_all_of_them(tiny_llama, tmp_path):
    store = FeatureStore.open(extract_tiny(tiny_llama, tmp_path, top_blocks=100).store)
    assert store.attrs["top_blocks"] == L and store.top_blocks()[1]["first"] == 0


def test_blocks_that_are_not_llama_blocks_are_not_stored_and_not_exported(tiny_models, tmp_path):
    store = FeatureStore.open(extract_tiny(tiny_models["qwen2"], tmp_path).store)
    assert store.top_blocks() is None
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    with pytest.raises(BackboneError, match=r"not Llama blocks \(qwen2 blocks are not Llama blocks\); "
                                            r"train --kind ladder"):
        export_top_blocks(model, 1)


def test_16_bit_weights_are_stored_in_16_bits_and_others_in_32(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.model.layers[L - 1].mlp.up_proj.weight.copy_(model.model.layers[L - 1].mlp.up_proj.weight.half())
    weights, _ = export_top_blocks(model, 1)
    assert weights[f"layers.{L - 1}.mlp.up_proj.weight"].dtype == np.float16
    assert weights[f"layers.{L - 1}.mlp.down_proj.weight"].dtype == np.float32
