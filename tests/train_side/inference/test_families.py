"""Every supported family from its store: sized from whatever its config calls the MLP width, one
training step through its head (projection and logit scale folded in), cached generation equal to
recomputation, and `train_side check` passing on the store."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.backbones import load_backbone
from extract.run import extract
from featurestore import FeatureStore
from featurestore import head as stored_head
from tests.train_side.generation import assert_cached_generation_equals_recomputation
from tests.models import FAMILIES
from train_side.cli import main
from train_side.data import read_batch
from train_side.inference.check import check_store
from train_side.inference.generate import Pipeline
from train_side.network.loss import batch_loss
from train_side.network.model import FrozenHead, SideConfig, SideNetwork
from train_side.training.train import backbone_dims

pytestmark = pytest.mark.slow  # a model of every family: CI runs it, the fast loop skips it


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_generates_and_passes_the_head_check(tiny_models, tmp_path, family):
    path = extract(str(tiny_models[family]), limit=3, root=tmp_path, codec="int8o", max_length=128,
                   progress=False).store
    store = FeatureStore.open(path)
    weights, config = store.head()
    head = FrozenHead(weights, config)
    y = torch.randn(5, store.hidden_size)
    np.testing.assert_allclose(head(y).numpy(), stored_head.logits(y.numpy(), weights, config), rtol=1e-5, atol=1e-5)

    torch.manual_seed(0)
    side = SideNetwork(SideConfig(**backbone_dims(store), kind="xladder", delta=1, side_width=16, n_heads=2))
    batch = read_batch(store, np.arange(store.n_examples), side.config.inputs)
    optimizer = torch.optim.AdamW(side.parameters(), lr=1e-2)
    before = batch_loss(side, head, batch)
    before.backward()
    optimizer.step()
    assert torch.isfinite(before) and side.up.weight.abs().sum() > 0  # one step moved the zero-initialised output

    backbone = load_backbone(str(tiny_models[family]))
    pipeline = Pipeline(backbone, head, side.eval(), store.codec)
    prompts = [store.example(0).input_ids[:12].tolist(), store.example(1).input_ids[:7].tolist()]  # left padding
    assert_cached_generation_equals_recomputation(pipeline, prompts, max_new_tokens=4)

    assert check_store(path).ok


def test_check_command(tiny_models, tmp_path):
    store = extract(str(tiny_models["granite"]), limit=3, root=tmp_path, codec="fp32", progress=False).store
    result = CliRunner().invoke(main, ["check", str(store), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("head check passed: largest difference ")
