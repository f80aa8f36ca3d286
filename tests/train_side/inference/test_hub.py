"""Runs on the Hugging Face Hub, against a stand-in for huggingface_hub's client (no network)."""

import json

import pytest
import torch
from click.testing import CliRunner

from featurestore import FeatureStore
from featurestore.hub import HubError
from train_side import checkpoint
from train_side.cli import main
from train_side.config import DataConfig
from train_side.inference import hub
from train_side.inference.hub import fetch_run, model_card, push_run
from train_side.training.train import train
from tests.hub_fake import FakeHub, HubDown

URL = "hf://team/tiny-ladder"


@pytest.fixture(scope="module")
def run(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub-run") / "ladder"
    train(tiny_store, out, side={"side_width": 8, "n_heads": 2}, data=DataConfig(epochs=1, val_fraction=0.2),
          progress=False, keep_resume=True)
    (out / "eval").mkdir()
    (out / "eval" / "metrics.json").write_text(json.dumps(
        {"model": "ladder", "dataset": "counting", "split": "test", "examples": 20, "accuracy": 0.35,
         "mean_cot_tokens": 12.5, "tokens_per_second": 61.0, "decoding": "greedy"}))
    (out / "eval" / "predictions.jsonl").write_text("{}\n")
    return out


def test_push_sends_the_run_in_one_commit_config_last(run, tmp_path):
    fake = FakeHub(tmp_path)
    pushed = push_run(run, URL, api=fake)
    assert fake.calls[0] == ("create_repo", "team/tiny-ladder", "model", None, True)
    [commit] = fake.commits
    assert commit["paths"] == pushed.files and commit["paths"][-1] == "side_config.json"
    assert set(commit["paths"]) == {"README.md", "side.safetensors", "side_config.json", "metrics.jsonl", "loss.png",
                                    "eval/metrics.json", "eval/predictions.jsonl"}
    assert (run / "resume.pt").is_file()  # there, but never sent: optimizer state is no use to a user
    files = fake.repos[("model", "team/tiny-ladder")]
    assert files["side.safetensors"] == (run / "side.safetensors").read_bytes()


def test_an_interrupted_push_changes_nothing(run, tmp_path):
    fake = FakeHub(tmp_path, fail_at_commit=0)
    with pytest.raises(HubDown):
        push_run(run, URL, api=fake)
    assert set(fake.repos[("model", "team/tiny-ladder")]) == {".gitattributes"}


def test_the_model_card_names_backbone_store_data_and_metrics(run):
    card = model_card(run, hub.parse_hf_url(URL, "model"))
    trained = checkpoint.Checkpoint.load(run)
    assert card.startswith("---\nlibrary_name: ladder-cache\n")
    assert "| backbone | tiny (Tiny, float32, quantization none) |" in card
    assert trained.store.fingerprint in card and "counting, split train" in card
    assert f"| validation loss | {trained.val_loss:.4f} |" in card
    assert "accuracy 35.0%, mean CoT 12.5 tokens, 61.0 tokens/s" in card
    assert f'SideModel.from_pretrained("{URL}")' in card and f'train_side generate {URL} "your question"' in card


def test_a_pushed_run_is_read_back_from_hf_urls(run, tiny_store, tmp_path, monkeypatch):
    fake = FakeHub(tmp_path)
    push_run(run, URL, api=fake)
    local = fetch_run(URL + "@main", download=fake.snapshot_download)
    assert fake.calls[-1][:3] == ("snapshot_download", "team/tiny-ladder", "model")
    a, b = checkpoint.load_weights(run), checkpoint.load_weights(local)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    loss = CliRunner().invoke(main, ["loss", URL, str(tiny_store)])
    assert loss.exit_code == 0 and "teacher-forced loss" in loss.output, loss.output
    assert loss.output == CliRunner().invoke(main, ["loss", str(run), str(tiny_store)]).output
    assert FeatureStore.open(tiny_store).fingerprint == checkpoint.Checkpoint.load(local).store.fingerprint


def test_refusals(run, tmp_path):
    with pytest.raises(HubError, match="a side network goes to a model repository: hf://ORG/NAME"):
        push_run(run, "hf://datasets/team/x", api=FakeHub(tmp_path))
    with pytest.raises(HubError, match="holds no trained side network"):
        push_run(tmp_path, URL, api=FakeHub(tmp_path))
    with pytest.raises(HubError, match="a run is read from a directory or hf://ORG/NAME"):
        fetch_run("s3://bucket/run")


def test_offline_the_error_is_one_line():
    """HF_HUB_OFFLINE=1 here (tests/conftest.py): the real client, asked for a run it has not cached."""
    with pytest.raises(HubError, match="not in the local Hugging Face cache and the Hub cannot be reached") as e:
        fetch_run("hf://nobody-here/no-such-run")
    assert "\n" not in str(e.value)
    result = CliRunner().invoke(main, ["generate", "hf://nobody-here/no-such-run", "hi"])
    assert result.exit_code == 1 and result.output.count("\n") == 1


def test_cli_push(run, tmp_path, monkeypatch):
    fake = FakeHub(tmp_path)
    monkeypatch.setattr(hub, "hub_api", lambda: fake)
    result = CliRunner().invoke(main, ["push", str(run), URL, "--private"])
    assert result.exit_code == 0 and result.output.startswith(f"7 files pushed to {URL}: README.md"), result.output
    assert fake.calls[0][3] is True  # private


def test_cli_push_failure_is_one_line(run, tmp_path, monkeypatch):
    fake = FakeHub(tmp_path, fail_at_commit=0)
    monkeypatch.setattr(hub, "hub_api", lambda: fake)
    result = CliRunner().invoke(main, ["push", str(run), URL])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "cannot push to hf://team/tiny-ladder: connection reset" in result.output
