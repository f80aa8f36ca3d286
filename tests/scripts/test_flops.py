"""scripts/flops.py: the analytic count the compute-matched comparison budgets with."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models import tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import flops  # noqa: E402


@pytest.fixture
def model():
    model_class, config = tiny_config("llama")
    torch.manual_seed(0)
    return model_class(config)


def test_shape_counts_the_block_matrices_and_the_head(model):
    config = model.config
    shape = flops.Shape.of(model, np.array([0, 1, 1, 0]))
    kv = config.num_key_value_heads * config.hidden_size // config.num_attention_heads
    d, ff = config.hidden_size, config.intermediate_size
    assert shape.block_weights == 2 * d * d + 2 * d * kv + 3 * d * ff  # q, o; k, v; gate, up, down
    assert shape.head_weights == config.vocab_size * d and shape.answer_fraction == 0.5
    assert shape.forward == 2 * config.num_hidden_layers * shape.block_weights


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft's, as benchlib filters it
def test_lora_weights_are_what_peft_trains(model):
    import peft  # the [baselines] extra: make install installs it
    counted = flops.lora_weights(model, 4)  # before peft wraps the projections (in place)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear"))
    assert counted == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def test_a_side_network_pays_for_its_own_weights_and_the_answer_tokens_only():
    shape = flops.Shape(n_layers=30, block_weights=3_538_944, head_weights=49_152 * 576, answer_fraction=0.49)
    qlora, side = flops.per_token(shape, 4_884_480, True), flops.per_token(shape, 3_493_594, False)
    assert qlora == 3 * shape.forward + 2 * shape.head + 8 * 4_884_480  # SmolLM2-135M: ~790 MFLOP per token
    assert 780e6 < qlora < 800e6 and side == 8 * 3_493_594 + 2 * shape.head * 0.49
    assert qlora / side > 9  # the Ladder's step is a tenth of QLoRA's
