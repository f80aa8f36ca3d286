"""Every supported family, each a tiny random model built from its config: the store holds the
model's own hidden states and its head gives the model's own logits; the head check refuses a head
that does not; the families that cannot work are refused by name before any weights load."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from extract.backbones import BackboneError, families, load_backbone, resolve_backbone
from extract.backbones.check import HeadMismatchError, compare_head
from extract.provenance import Provenance
from extract.run import extract
from featurestore import FeatureStore, get_codec
from featurestore import head as stored_head
from tests.models import FAMILIES, D, L

pytestmark = pytest.mark.slow  # a model of every family: CI runs it, the fast loop skips it

WIDTHS = {"gpt2": 4 * D, "gptj": 96}  # the side network's MLP width where the config does not call it intermediate_size
HEAD = {  # what each family's head holds beyond lm_head.weight, and its logit scale
    "phi": ({"lm_head.bias", "norm.weight", "norm.bias"}, 1.0),
    "gpt2": ({"norm.weight", "norm.bias"}, 1.0),
    "gptj": ({"lm_head.bias", "norm.weight", "norm.bias"}, 1.0),
    "opt": ({"norm.weight", "norm.bias"}, 1.0),
    "opt_project": ({"projection.weight"}, 1.0),  # no final norm
    "gpt_neox": ({"norm.weight", "norm.bias"}, 1.0),
    "olmo": (set(), 1.0),  # a norm without weight or bias
    "cohere": ({"norm.weight"}, 0.25),
    "granite": ({"norm.weight"}, 0.25),
    "granitemoe": ({"norm.weight"}, 0.25),
    "cohere2": ({"norm.weight"}, 0.25),
    "falcon_h1": ({"norm.weight"}, 4.0),
}


def extract_tiny(model, root, **settings):
    return extract(str(model), root=root, **{"limit": 3, "codec": "fp32", "max_length": 128, "progress": False,
                                             **settings})


@pytest.mark.parametrize("family", FAMILIES)
def test_store_holds_the_models_states_and_its_head_gives_the_models_logits(tiny_models, tmp_path, family):
    result = extract_tiny(tiny_models[family], tmp_path)
    store = FeatureStore.open(result.store)
    model = AutoModelForCausalLM.from_pretrained(tiny_models[family]).eval()
    weights, config = store.head()

    json.dumps(config)
    extra, scale = HEAD.get(family, ({"norm.weight"}, 1.0))
    assert set(weights) == {"lm_head.weight"} | extra and config["logit_scale"] == scale
    assert (store.top_blocks() is not None) == (family == "llama")  # the side network's block is Llama's
    assert Provenance.load(store.attrs).backbone_sizes == {
        "n_layers": L, "hidden_size": D, "intermediate_size": WIDTHS.get(family, 128)}
    captured = []  # OPT-350m: the store keeps h_L before project_out, which the head applies
    if family == "opt_project":
        model.model.decoder.project_out.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    for i in (0, store.n_examples - 1):
        example = store.example(i)
        ids = torch.from_numpy(example.input_ids.astype(np.int64))[None]
        with torch.no_grad():
            output = model(input_ids=ids, output_hidden_states=True)
        states = [*output.hidden_states[:-1], captured[-1] if captured else output.hidden_states[-1]]
        for k, state in enumerate(states):
            np.testing.assert_allclose(example.hidden[k], state[0].numpy(), rtol=0, atol=1e-4)
        logits = output.logits[0].numpy()
        ours = stored_head.logits(example.hidden[L], weights, config)
        np.testing.assert_allclose(ours, logits, rtol=0, atol=1e-4 * np.abs(logits).max())


# --- the head check --------------------------------------------------------------------------


def without_scale(monkeypatch, model_type: str) -> None:
    """The head of a family as it was before its logit scale was known (the Falcon-H1 bug)."""
    family = families.FAMILIES[model_type]
    monkeypatch.setitem(families.FAMILIES, model_type, replace(family, logit_scale=lambda config: 1.0))


@pytest.mark.parametrize(("family", "settings"), [
    ("falcon_h1", {}),
    ("granite", {"codec": "int8o"}),
    ("cohere", {"dtype": "bfloat16", "codec": "bf16"}),
])
def test_a_head_that_misses_a_logit_scale_is_refused_before_any_store_exists(tiny_models, tmp_path, monkeypatch,
                                                                             family, settings):
    assert extract_tiny(tiny_models[family], tmp_path / "right", **settings).computed_tokens  # the tolerance fits
    without_scale(monkeypatch, family)
    name = families.FAMILIES[family].name
    with pytest.raises(HeadMismatchError, match=f"stored head of {name} .* does not give the model's own logits: "
                                                "largest difference"):
        extract_tiny(tiny_models[family], tmp_path / "wrong", **settings)
    assert not list((tmp_path / "wrong").glob("*.zarr"))  # refused before the store was created


def test_an_untested_family_is_kept_only_when_its_head_gives_the_models_logits(tiny_models, tmp_path, monkeypatch):
    monkeypatch.delitem(families.FAMILIES, "qwen2")  # as if it were a family nobody tested: the usual conventions
    monkeypatch.delitem(families.FAMILIES, "granite")
    assert not load_backbone(str(tiny_models["qwen2"])).family.tested
    assert FeatureStore.open(extract_tiny(tiny_models["qwen2"], tmp_path).store).n_examples
    with pytest.raises(HeadMismatchError, match=r"stored head of granite \(GraniteForCausalLM\)"):
        extract_tiny(tiny_models["granite"], tmp_path)  # its logits_scaling is not a usual convention


def test_compare_head_measures_the_codec_and_the_head(tiny_models):
    backbone = load_backbone(str(tiny_models["granite"]))
    weights, config = backbone.head()
    ids, mask = torch.tensor([[5, 17, 42, 99, 123, 7], [11, 12, 13, 0, 0, 0]]), torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    exact = compare_head(backbone, weights, config, get_codec("fp32"), ids, mask)
    lossy = compare_head(backbone, weights, config, get_codec("int8o"), ids, mask)
    wrong = compare_head(backbone, weights, {**config, "logit_scale": 1.0}, get_codec("int8o"), ids, mask)

    assert exact.ok and exact.difference < 1e-5 * exact.largest
    assert lossy.ok and lossy.allowed > exact.allowed  # the codec's round trip is allowed for, exactly
    assert not wrong.ok and wrong.difference > 10 * wrong.allowed


# --- refused by name -------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "reason"), [
    ({"model_type": "rwkv", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2}, "ignores the attention mask"),
    ({"model_type": "recurrent_gemma", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2},
     "recurrent state is not a KV cache"),
    ({"model_type": "gemma3n_text", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2},
     "AltUp stacks"),
    ({"model_type": "mamba", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2}, "outside the KV cache"),
    ({"model_type": "falcon_mamba", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2},
     "outside the KV cache"),
    ({"model_type": "mamba2", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 4,
      "head_dim": 16}, "no MLP"),
    ({"model_type": "dory", "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2}, "recurrent depth"),
])
def test_families_that_cannot_work_are_refused_by_name_before_any_weights_load(tmp_path, monkeypatch, config, reason):
    AutoConfig.for_model(**config).save_pretrained(tmp_path)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(BackboneError, match=f"^{config['model_type']} is not supported: .*{reason}"):
        resolve_backbone(str(tmp_path))
