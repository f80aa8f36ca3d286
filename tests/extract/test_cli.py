"""Bad input to `extract`: a one-line error or warning, never a traceback or a complete half-store."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from extract.cli import main
from featurestore import FeatureStore, StoreError
from tests.models import save_tiny_model


def run(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    assert "Traceback" not in result.output
    return result


def error(result) -> str:
    """The error line (after any progress bar): exactly one, and the last."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_help_is_the_manual():
    result = run("--help")
    assert result.exit_code == 0
    for option in ("--model", "--dataset", "--quantization", "--layers", "--codec", "--resume", "--skip-long"):
        assert option in result.output


def test_unknown_model_and_missing_path(tmp_path):
    assert "not found" in error(run("--model", "no-such-model", "--root", tmp_path))
    assert "no such directory" in error(run("--model", "./missing/model", "--root", tmp_path))


def test_missing_fields_list_the_columns(tmp_path, tiny_llama):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "2+2?", "response": "#### 4"}) + "\n")
    message = error(run("--model", tiny_llama, "--dataset", data, "--root", tmp_path))
    assert "no column 'question'" in message and "prompt, response" in message
    assert run("--model", tiny_llama, "--dataset", data, "--question-field", "prompt", "--answer-field", "response",
               "--root", tmp_path).exit_code == 0


def test_empty_dataset(tmp_path, tiny_llama):
    (tmp_path / "empty.jsonl").write_text("")
    assert "no examples" in error(run("--model", tiny_llama, "--dataset", tmp_path / "empty.jsonl", "--root", tmp_path))


def test_long_examples_are_truncated_and_counted_or_skipped(tmp_path, tiny_llama):
    result = run("--model", tiny_llama, "--limit", "8", "--max-length", "240", "--root", tmp_path / "a")
    [store] = (tmp_path / "a").glob("*.zarr")
    truncated = FeatureStore.open(store).attrs["stats"]["n_truncated"]
    assert truncated > 0 and f"warning: {truncated} examples longer than --max-length were truncated" in result.output
    assert FeatureStore.open(store).lengths.max() == 240
    result = run("--model", tiny_llama, "--limit", "8", "--max-length", "240", "--skip-long", "--root", tmp_path / "b")
    [store] = (tmp_path / "b").glob("*.zarr")
    assert f"warning: {truncated} examples skipped" in result.output
    assert FeatureStore.open(store).n_examples == 8 - truncated


def test_bad_layer_spec(tmp_path, tiny_llama):
    assert "bad --layers" in error(run("--model", tiny_llama, "--layers", "first:3", "--root", tmp_path))


def test_fp16_overflow_is_an_error_naming_the_layer_and_no_store_is_complete(tmp_path):
    """Gemma 3 reaches ~1e5; a tiny model with huge embeddings does the same to fp16."""
    path = save_tiny_model(tmp_path / "loud", "llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1e6)
    model.save_pretrained(path)
    message = error(run("--model", path, "--limit", "3", "--codec", "fp16", "--root", tmp_path / "root"))
    assert "layer 0: values reach" in message and "use --codec bf16" in message
    [store] = (tmp_path / "root").glob("*.zarr")
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore.open(store)
    assert run("--model", path, "--limit", "3", "--codec", "bf16", "--root", tmp_path / "root").exit_code == 0
