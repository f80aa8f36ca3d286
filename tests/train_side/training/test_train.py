import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers
import zarr
from click.testing import CliRunner
from safetensors.torch import load_file
from zarr.storage import LocalStore

from featurestore import FeatureStore
from tests.featurestore.synth import RecordingStore
from tests.train_side.crash import crash_at_step
from tests.train_side.tiny_store import L
from train_side import checkpoint
from train_side.cli import main
from train_side.config import LR, DataConfig, OptimConfig
from train_side.data import read_batch
from train_side.network.loss import target_count
from train_side.network.model import SideConfig
from train_side.training.sweep import sweep
from train_side.training.train import Run, RunSpec, backbone_dims, train

SMALL = {"side_width": 16, "n_heads": 2}


@pytest.fixture(autouse=True)
def no_backbone(monkeypatch):
    """Training a Ladder or xLadder never builds a transformers model: any attempt fails the test (a
    top side network starts from its backbone's blocks: tests/train_side/training/test_top.py)."""
    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", lambda *a, **k: pytest.fail("a backbone was built"))


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "side.safetensors")


def test_a_tiny_side_network_overfits_the_tiny_store(tmp_path, tiny_store):
    run = train(tiny_store, tmp_path / "run", side=SMALL, optim=OptimConfig(lr=1e-2),
                data=DataConfig(epochs=30, token_budget=128, val_fraction=0.1), progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses[0] > 2.0 and np.mean(losses[-5:]) < 0.1  # the counting rule, learned from stored states
    assert run.val_loss < 0.3  # and it holds on held-out examples
    for name in ("side.safetensors", "side_config.json", "train_config.yaml", "metrics.jsonl", "loss.png",
                 "best/side.safetensors", "best/side_config.json"):
        assert (tmp_path / "run" / name).is_file()
    assert not (tmp_path / "run" / "resume.pt").exists()  # a finished run keeps no optimizer state


def test_xladder_reads_only_the_top_hidden_states(tmp_path, tiny_store):
    recorder = RecordingStore(LocalStore(tiny_store, read_only=True))
    store = FeatureStore(zarr.open_group(recorder, mode="r"), str(tiny_store))
    train(store, tmp_path / "x", side={"kind": "xladder", "delta": 1, **SMALL}, data=DataConfig(epochs=1),
          progress=False)
    read = {int(key.split("/")[1]) for key in recorder.keys if key.startswith("layers/")}
    assert read == {L - 1, L}


def test_checkpoint_holds_only_the_side_network_and_round_trips(tmp_path, tiny_store):
    run = train(tiny_store, tmp_path / "c", side=SMALL, data=DataConfig(epochs=1), progress=False)
    model, config = checkpoint.load_side(tmp_path / "c"), checkpoint.load_config(tmp_path / "c")
    saved = weights(tmp_path / "c")
    assert saved.keys() == run.model.state_dict().keys()  # no head, no backbone
    assert sum(t.numel() for t in saved.values()) == run.model.n_parameters() == config["n_parameters"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    store = FeatureStore.open(tiny_store)
    assert config["store"]["fingerprint"] == store.fingerprint and config["store"]["codec"]["name"] == "fp32"
    assert config["side"]["side_width"] == 16 and config["optim"]["lr"] == LR["ladder"]  # the kind's default


def test_a_run_trained_alone_equals_the_same_run_inside_a_sweep(tmp_path, tiny_store):
    data = DataConfig(epochs=2, token_budget=96)
    sweep(tiny_store, tmp_path / "sweep", {"kind": ["ladder", "xladder"], "lr": [1e-3, 3e-3]}, side=SMALL,
          data=data, progress=False)
    train(tiny_store, tmp_path / "alone", side={**SMALL, "kind": "xladder"}, optim=OptimConfig(lr=3e-3), data=data,
          progress=False)
    inside, alone = weights(tmp_path / "sweep" / "kind-xladder_lr-0.003"), weights(tmp_path / "alone")
    assert inside.keys() == alone.keys() and all(torch.equal(inside[k], alone[k]) for k in alone)
    summary = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()
    assert len(summary) == 5 and summary[0].startswith("best,run,kind,lr,parameters,train_loss,val_loss,best_val_loss")
    assert (tmp_path / "sweep" / "val_loss.png").is_file()


def test_resume_continues_identically(tmp_path, tiny_store):
    data = DataConfig(epochs=3, token_budget=96, save_every=5)
    train(tiny_store, tmp_path / "straight", side=SMALL, data=data, progress=False)

    with crash_at_step(12):
        train(tiny_store, tmp_path / "resumed", side=SMALL, data=data, progress=False)
    assert checkpoint.load_config(tmp_path / "resumed")["step"] == 10  # the last checkpoint before the crash
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_store, tmp_path / "resumed", side=SMALL, data=data, progress=False)
    train(tiny_store, tmp_path / "resumed", side=SMALL, data=data, resume=True, progress=False)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(set(steps))  # metrics logged after the checkpoint were dropped, not duplicated


def test_max_steps_overrides_epochs_and_continues_the_same_batch_sequence(tmp_path, tiny_store):
    data = DataConfig(epochs=1, token_budget=96)
    one = train(tiny_store, tmp_path / "one", side=SMALL, data=data, progress=False)
    longer = train(tiny_store, tmp_path / "more", side=SMALL, data=replace(data, max_steps=one.step + 3),
                   progress=False)
    assert longer.step == one.step + 3 and longer.val_loss is not None  # validated at its last step
    config = checkpoint.load_config(tmp_path / "more")
    assert config["step"] == one.step + 3 and config["epochs"] == round((one.step + 3) / one.step, 4)
    tokens = lambda run: [json.loads(line)["tokens"] for line in (tmp_path / run / "metrics.jsonl").read_text()
                          .splitlines() if '"loss"' in line]
    assert tokens("more")[:one.step] == tokens("one")  # the first epoch's batches, in the same order


def test_cli_train_and_sweep(tmp_path, tiny_store):
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(tiny_store), "--out", str(tmp_path / "t"), "--side-width", "16",
                                  "--heads", "2", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "ladder: " in result.output and "validation loss" in result.output
    result = runner.invoke(main, ["sweep", str(tiny_store), "--out", str(tmp_path / "s"), "--side-width", "16",
                                  "--heads", "2", "--epochs", "1", "--grid", "kind=ladder,xladder"])
    assert result.exit_code == 0, result.output
    assert "kind-xladder" in result.stdout and "summary.csv" in result.stdout
    bad = runner.invoke(main, ["sweep", str(tiny_store), "--out", str(tmp_path / "b"), "--grid", "colour=red"])
    assert bad.exit_code == 1 and "unknown settings ['colour']" in bad.output
    missing = runner.invoke(main, ["train", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "m")])
    assert missing.exit_code == 1 and missing.output.startswith("Error: no feature store at")



def test_accumulating_batches_is_one_step_on_their_union(tmp_path, tiny_store):
    store = FeatureStore.open(tiny_store)
    side = SideConfig(**backbone_dims(store), **SMALL)
    parts = [np.arange(0, 6), np.arange(30, 34)]  # short and long examples: different numbers of targets
    batches = [read_batch(store, indices, store.layers) for indices in parts]
    union = read_batch(store, np.concatenate(parts), store.layers)
    assert target_count(batches[0]) != target_count(batches[1])
    accumulated, whole = (Run.for_store(store, RunSpec.at(tmp_path / name, side), data=DataConfig(), total_steps=10)
                          for name in ("accumulated", "whole"))
    for _ in range(3):
        assert accumulated.train_step(batches) == pytest.approx(whole.train_step(union), rel=1e-5)
    assert accumulated.step == whole.step == 3  # optimizer steps
    for a, b in zip(accumulated.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_grad_accum_counts_optimizer_steps_over_the_same_batches(tmp_path, tiny_store):
    data = DataConfig(epochs=2, token_budget=96)
    one = train(tiny_store, tmp_path / "one", side=SMALL, data=data, progress=False)
    three = train(tiny_store, tmp_path / "three", side=SMALL, data=replace(data, grad_accum=3), progress=False)
    per_epoch = one.step // 2
    assert three.step == 2 * math.ceil(per_epoch / 3)
    records = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in records("three") if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, three.step + 1))
    tokens = lambda run: sum(m["tokens"] for m in records(run) if "loss" in m)
    assert tokens("three") == tokens("one")  # every batch, once per epoch
    assert [m["step"] for m in records("three") if "val_loss" in m] == [three.step // 2, three.step]
    assert checkpoint.load_config(tmp_path / "three")["epochs"] == 2.0


DIVERGING = {"lr": [1e-2, 0.5]}  # at lr 0.5 the tiny network's validation loss soon stops improving
PATIENT = DataConfig(epochs=6, token_budget=96, eval_every=2, early_stop=2)


def val_losses(run_dir) -> list[float]:
    return [m["val_loss"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in m]


def test_each_run_of_a_sweep_stops_early_on_its_own_and_keeps_its_best(tmp_path, tiny_store):
    rows = sweep(tiny_store, tmp_path / "s", DIVERGING, side=SMALL, data=PATIENT, progress=False)
    steady, diverging = tmp_path / "s" / "lr-0.01", tmp_path / "s" / "lr-0.5"
    total = checkpoint.load_config(steady)["step"]
    stopped = checkpoint.load_config(diverging)
    assert stopped["stopped_early"] and stopped["step"] < total and not checkpoint.load_config(steady)["stopped_early"]
    losses = val_losses(diverging)
    assert len(losses) - 1 - losses.index(min(losses)) == PATIENT.early_stop  # 2 validations without improvement
    for run in (steady, diverging):
        best = checkpoint.load_config(run / "best")
        assert best["val_loss"] == min(val_losses(run)) and best["step"] % PATIENT.eval_every == 0
        checkpoint.load_side(run / "best")  # a run checkpoint of its own
        assert not (run / "resume.pt").exists()
    assert not torch.equal(weights(diverging)["up.weight"], weights(diverging / "best")["up.weight"])
    assert [row["run"] for row in rows] == ["lr-0.01", "lr-0.5"] and [row["best"] for row in rows] == ["*", ""]
    assert rows[1]["stopped"] == "early" and rows[0]["best_val_loss"] < rows[1]["best_val_loss"]

    before = {run: weights(run) for run in (steady, diverging)}
    again = sweep(tiny_store, tmp_path / "s", DIVERGING, side=SMALL, data=PATIENT, progress=False, resume=True)
    assert again == rows  # finished runs are only loaded, not trained again
    assert all(torch.equal(before[run][k], weights(run)[k]) for run in before for k in before[run])


def test_an_early_stopping_run_resumed_stops_where_it_would_have(tmp_path, tiny_store):
    data = replace(PATIENT, save_every=4)
    straight = train(tiny_store, tmp_path / "straight", side=SMALL, optim=OptimConfig(lr=0.5), data=data,
                     progress=False)
    assert straight.stopped_early and straight.step > 5  # past the checkpoint at step 4
    with crash_at_step(straight.step - 1):
        train(tiny_store, tmp_path / "resumed", side=SMALL, optim=OptimConfig(lr=0.5), data=data, progress=False)
    resumed = train(tiny_store, tmp_path / "resumed", side=SMALL, optim=OptimConfig(lr=0.5), data=data, resume=True,
                    progress=False)
    assert straight.stopped_early and resumed.stopped_early and resumed.step == straight.step
    assert resumed.best_loss == straight.best_loss
    for name in ("resumed", "resumed/best"):
        assert all(torch.equal(weights(tmp_path / name)[k], v) for k, v in weights(tmp_path / name.replace(
            "resumed", "straight")).items())


def test_keep_resume_keeps_the_optimizer_state_and_a_finished_run_is_not_trained_again(tmp_path, tiny_store):
    data = DataConfig(epochs=1, token_budget=96)
    run = train(tiny_store, tmp_path / "r", side=SMALL, data=data, progress=False, keep_resume=True)
    assert (tmp_path / "r" / "resume.pt").is_file()
    again = train(tiny_store, tmp_path / "r", side=SMALL, data=data, progress=False, resume=True)
    assert again.finished and again.step == run.step and again.val_loss == run.val_loss
    with pytest.raises(FileExistsError, match="already holds a training run"):  # deleted resume.pt or not
        train(tiny_store, tmp_path / "r", side=SMALL, data=data, progress=False)
