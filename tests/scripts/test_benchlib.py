"""scripts/benchlib.py: the baselines as a careful peft user sets them up, without noise."""

import sys
import warnings
from pathlib import Path

from tests.models import tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import benchlib  # noqa: E402


def test_lora_set_up_prints_no_deprecation_warning_of_the_libraries():
    model_class, config = tiny_config("llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = benchlib.with_lora(model_class(config), rank=4, checkpointing=True)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)], [str(w.message) for w in caught]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
