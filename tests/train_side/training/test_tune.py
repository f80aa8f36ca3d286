"""`train_side tune`: Optuna studies trained in batches over one pass of the data, pruned at each
rung, shared through their storage, resumable. Subprocess workers: tests/reliability/test_tune_workers.py."""

import csv
import json
import math
import os
import signal
import time
from dataclasses import replace

import optuna
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from featurestore import FeatureStore
from train_side import checkpoint
from train_side.cli import main
from train_side.config import DataConfig, OptimConfig
from train_side.training import tune as tuning
from train_side.training.space import Choice, Range, Search, load_space, parse_space
from train_side.training.sweep import GridError, configs
from train_side.data import plan, read_batch, split_examples
from train_side.network.loss import mean_loss
from train_side.training.train import Run, RunSpec, Watch, backbone_dims, fit, rung_batches, train
from train_side.training.tune import TuneError, TuneInterrupted, tune

SMALL = {"side_width": 16, "n_heads": 2}
DATA = DataConfig(epochs=3, token_budget=96, val_fraction=0.1)
LRS = [1e-3, 3e-3, 1e-2]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "side.safetensors")


def studied(out, name=None) -> optuna.Study:
    return optuna.load_study(study_name=name or out.name, storage=f"sqlite:///{out / 'study.db'}")


def test_a_space_file_gives_ranges_choices_and_fixed_values(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nheads: {low: 1, high: 8}\nreduction: [4, 8]\n"
                    "taps: [[1, 2], [4]]\nkind: ladder\n")
    assert load_space(path) == {"lr": Range(1e-4, 1e-2, log=True), "n_heads": Range(1, 8),
                                "reduction": Choice((4, 8)), "taps": Choice(([1, 2], [4])),
                                "kind": Choice(("ladder",))}
    assert Range(1, 8).integer and not Range(1e-4, 1e-2).integer


@pytest.mark.parametrize("space, phrase", [
    ({"colour": ["red"]}, "unknown settings ['colour']"),
    ({"lr": {"low": 1e-2, "high": 1e-4}}, "lr: the range 0.01..0.0001 is empty"),
    ({"weight_decay": {"low": 0, "high": 0.1, "log": True}}, "a log range needs positive bounds"),
    ({"lr": {"low": -1, "high": 1e-2, "log": True}}, "lr: Invalid value"),  # lr's own bound: above 0
    ({"lr": []}, "lr: an empty list"),
    ({"kind": {"low": 1, "high": 2}}, "kind: Invalid value"),
    ({"heads": {"low": 1.5, "high": 4}}, "heads takes integers"),
    ({"lr": {"low": 1e-3}}, "a range is {low: L, high: H"),
])
def test_a_bad_space_is_refused_saying_what_to_fix(space, phrase):
    with pytest.raises(GridError) as raised:  # SpaceError's base: a grid's unknown settings are a space's too
        parse_space(space)
    assert phrase in str(raised.value) and "\n" not in str(raised.value)


def test_a_watch_stops_a_run_early_saves_it_frees_it_and_leaves_the_others_unchanged(tmp_path, tiny_store):
    """The loop's hook: a run stopped at a validation is saved at that step and its memory
    released; the others train on exactly as they would have without it."""
    store = FeatureStore.open(tiny_store)
    sizes = backbone_dims(store)
    specs = [RunSpec.at(tmp_path / name, configs({"lr": lr}, SMALL, {}, sizes)[0], OptimConfig(lr=lr))
             for name, lr in (("stopped", 1e-3), ("kept", 3e-3))]
    asked = []

    def stop(runs: list[Run], losses: list[float]) -> list[Run]:
        asked.append([(run.name, run.step) for run in runs])
        return [run for run in runs if run.name == "stopped"]

    stopped, kept = fit(store, specs, DATA, progress=False, watch=Watch(due=lambda step: step == 4, stop=stop))
    # asked after the validation the watch wanted (before any epoch's end), then after each epoch's, without "stopped"
    assert asked == [[("stopped", 4), ("kept", 4)], [("kept", 7)], [("kept", 14)], [("kept", 21)]]
    assert stopped.step == 4 and checkpoint.load_config(tmp_path / "stopped")["step"] == 4
    assert all(p.device.type == "meta" for p in stopped.model.parameters()) and stopped.optimizer is None
    assert stopped.model.n_parameters() > 0  # still describable
    alone = train(tiny_store, tmp_path / "alone", side=SMALL, optim=OptimConfig(lr=3e-3), data=DATA, progress=False)
    assert kept.step == alone.step and all(torch.equal(weights(tmp_path / "kept")[k], v)
                                           for k, v in weights(tmp_path / "alone").items())


def test_a_rung_ranks_runs_on_a_share_of_the_held_out_set_and_leaves_their_validation_alone(tmp_path, tiny_store):
    """A rung's loss is the loss on the rung's evenly spread share of the held-out batches; it is
    logged apart, and neither the validation loss nor the best weights see it."""
    store, data = FeatureStore.open(tiny_store), replace(DATA, val_fraction=0.4)
    train_idx, val_idx = split_examples(store.n_examples, data.val_fraction, data.seed)
    held_out = [read_batch(store, b, store.layers) for b in plan(store, val_idx, data.token_budget)]
    per_epoch = len(plan(store, train_idx, data.token_budget))
    total = data.epochs * per_epoch
    assert len(held_out) >= 3 and per_epoch > 4
    judged = {}

    def stop(runs: list[Run], losses: list[float]) -> list[Run]:
        judged[runs[0].step] = losses[0]
        return []

    spec = RunSpec.at(tmp_path / "run", configs({}, SMALL, {}, backbone_dims(store))[0])
    watch = Watch(due={4, per_epoch, total}.__contains__, share=0.5, stop=stop)
    [run] = fit(store, [spec], data, progress=False, watch=watch)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    at = lambda step, key: [r[key] for r in records if r["step"] == step and key in r]  # noqa: E731
    assert at(4, "rung_loss") == [judged[4]] and at(4, "val_loss") == []  # a rung alone: no validation
    assert at(per_epoch, "rung_loss") == [judged[per_epoch]] != at(per_epoch, "val_loss")  # both, told the rung's
    sample = rung_batches(held_out, 0.5)
    assert len(sample) == math.ceil(len(held_out) / 2)
    assert judged[total] == pytest.approx(mean_loss(run.model, run.head, sample), rel=1e-5)
    assert at(total, "val_loss") == [pytest.approx(mean_loss(run.model, run.head, held_out), rel=1e-5)]
    val_losses = [r["val_loss"] for r in records if "val_loss" in r]
    assert checkpoint.load_config(tmp_path / "run" / "best")["val_loss"] == pytest.approx(min(val_losses))


def test_rung_batches_are_spread_evenly_and_never_none():
    assert rung_batches(list(range(10)), 0.3) == [0, 3, 6]
    assert rung_batches(list(range(10)), 0.01) == [0]
    everything = list(range(4))
    assert rung_batches(everything, 1.0) is everything


def test_a_search_prunes_losers_at_each_rung_and_its_best_trial_is_a_normal_run(tmp_path, tiny_store):
    lines = []
    outcome = tune(tiny_store, tmp_path / "t", parse_space({"lr": {"low": 1e-4, "high": 3e-2, "log": True}}),
                   Search(trials=9, parallel=9, sampler_seed=0, min_steps=2), side=SMALL, data=DATA, progress=False,
                   echo=lines.append)
    total = outcome.rows[0]["steps"] if outcome.rows[0]["state"] == "complete" else max(r["steps"] for r in outcome.rows)
    assert len(outcome.rows) == 9 and sorted((r["state"], r["steps"]) for r in outcome.rows) == \
        [("complete", total)] + [("pruned", 2)] * 6 + [("pruned", 6)] * 2  # exact thirds: 9, 3, 1 go on at steps 0, 2, 6
    for row in outcome.rows:  # each trial's run directory holds what the study says it trained
        saved = checkpoint.load_config(tmp_path / "t" / "trials" / f"{row['trial']:04d}")
        assert saved["step"] == row["steps"] and (row["steps"] == total) == (row["state"] == "complete")
        assert row["steps"] in (2, 6, 18) or row["state"] == "complete"  # pruned at a rung: 2 * 3^k steps
    trial_lines = [line for line in lines if " trial " in line]
    assert len(trial_lines) == 9 and all(("pruned at step" in line) or ("complete at step" in line)
                                         for line in trial_lines)
    best = outcome.best
    assert best["val_loss"] == min(r["val_loss"] for r in outcome.rows if r["state"] == "complete")
    assert best["val_loss"] == pytest.approx(studied(tmp_path / "t").best_value, abs=1e-4)
    run = checkpoint.load_config(best["run_dir"])
    assert run["optim"]["lr"] == pytest.approx(best["lr"]) and run["val_loss"] == pytest.approx(best["val_loss"], abs=1e-4)
    checkpoint.load_side(best["run_dir"])  # what eval, generate, push and SideModel load
    with open(tmp_path / "t" / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 9
    for name in ("tune.png", "tune_curves.png", "tune_importances.png"):
        assert (tmp_path / "t" / name).stat().st_size > 0
    assert "9 trials" in outcome.report and f"best: trial {best['trial']}" in outcome.report
    rerun = tune(tiny_store, tmp_path / "t", parse_space({"lr": {"low": 1e-4, "high": 3e-2, "log": True}}),
                 Search(trials=9, parallel=9, sampler_seed=0, min_steps=2), side=SMALL, data=DATA, progress=False)
    assert rerun.rows == outcome.rows  # a finished study: the same command only reports it


def grid_search(out, tiny_store, trials=3, **kwargs):
    return tune(tiny_store, out, parse_space({"lr": LRS}), Search(trials=trials, parallel=3, sampler="grid",
                pruner="none", sampler_seed=0), side=SMALL, data=DATA, progress=False, **kwargs)


def test_a_trial_trains_exactly_as_the_same_settings_alone(tmp_path, tiny_store):
    outcome = grid_search(tmp_path / "t", tiny_store, trials=10)  # capped at the grid's 3 points
    assert sorted(r["lr"] for r in outcome.rows) == LRS and {r["state"] for r in outcome.rows} == {"complete"}
    row = next(r for r in outcome.rows if r["lr"] == 3e-3)
    alone = train(tiny_store, tmp_path / "alone", side=SMALL, optim=OptimConfig(lr=3e-3), data=DATA, progress=False)
    inside = weights(tmp_path / "t" / "trials" / f"{row['trial']:04d}")
    assert all(torch.equal(inside[k], v) for k, v in weights(tmp_path / "alone").items())
    assert row["val_loss"] == round(alone.val_loss, 4)


def test_ctrl_c_saves_the_batch_and_the_same_command_resumes_it_to_the_same_results(tmp_path, tiny_store,
                                                                                   monkeypatch):
    straight = grid_search(tmp_path / "straight", tiny_store)
    step = Run.optimizer_step

    def ctrl_c_at_step_8(self):
        if self.step == 8 and self.name == "lr-0.001":
            os.kill(os.getpid(), signal.SIGINT)  # the loop saves every run after this step and stops
        return step(self)

    monkeypatch.setattr(Run, "optimizer_step", ctrl_c_at_step_8)
    with pytest.raises(TuneInterrupted, match="run the same command again"):
        grid_search(tmp_path / "resumed", tiny_store)
    study = studied(tmp_path / "resumed")
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3 + ["WAITING"] * 3  # each waits as a retry
    monkeypatch.setattr(Run, "optimizer_step", step)
    resumed = grid_search(tmp_path / "resumed", tiny_store)
    by_lr = lambda outcome: {r["lr"]: (r["val_loss"], r["steps"]) for r in outcome.rows if r["state"] == "complete"}
    assert by_lr(resumed) == by_lr(straight)  # continued from step 9 in the same run directories
    assert sorted(os.listdir(tmp_path / "resumed" / "trials")) == ["0000", "0001", "0002"]
    metrics = (tmp_path / "resumed" / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()
    steps = [record["step"] for record in map(json.loads, metrics) if "loss" in record]
    assert steps == sorted(set(steps))  # no step trained twice


def test_a_stale_trial_of_a_dead_worker_on_another_machine_is_retried(tmp_path, tiny_store):
    """A worker elsewhere that stops sending heartbeats: after twice --heartbeat its trial is
    failed and retried, here, with its settings."""
    out = tmp_path / "t"
    out.mkdir()
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage, study_name="t")
    trial = study.ask()
    trial.suggest_categorical("lr", LRS)  # what the dead worker was training
    trial.set_user_attr("worker", "elsewhere:1")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # its heartbeat is now older than twice the interval
    outcome = tune(tiny_store, out, parse_space({"lr": LRS}), Search(trials=1, parallel=1, pruner="none",
                   heartbeat=1), side=SMALL, data=DATA, progress=False)
    assert [r["state"] for r in outcome.rows] == ["fail", "complete"]
    assert outcome.rows[1]["lr"] == trial.params["lr"] and outcome.rows[1]["run_dir"].endswith("trials/0000")


def test_a_new_trial_asked_past_the_study_size_by_a_race_is_failed_as_surplus(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    mine, theirs = (optuna.create_study(storage=storage, study_name="s", load_if_exists=True) for _ in range(2))
    ask = optuna.Study.ask

    def another_worker_asks_first(self, *args, **kwargs):
        monkeypatch.setattr(optuna.Study, "ask", ask)
        ask(theirs)  # between this worker's count and its ask
        return ask(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "ask", another_worker_asks_first)
    assert tuning.ask(mine, n_trials=1, parallel=4) == []
    assert [(t.state.name, t.user_attrs) for t in mine.trials] == [("RUNNING", {}), ("FAIL", {"surplus": True})]


def test_a_study_is_joined_only_with_its_own_settings(tmp_path, tiny_store):
    grid_search(tmp_path / "t", tiny_store, trials=1)
    with pytest.raises(TuneError, match="started with other data: join it with the same command"):
        tune(tiny_store, tmp_path / "t", parse_space({"lr": LRS}), Search(trials=3, sampler="grid", pruner="none"),
             side=SMALL, data=DataConfig(epochs=1, token_budget=96, val_fraction=0.1), progress=False)


def test_cli_tune_and_its_one_line_errors(tmp_path, tiny_store):
    space = tmp_path / "space.yaml"
    space.write_text("lr: [0.001, 0.01]\n")
    runner = CliRunner()
    common = [str(tiny_store), "--side-width", "16", "--heads", "2", "--epochs", "2", "--token-budget", "96",
              "--val-fraction", "0.1"]
    result = runner.invoke(main, ["tune", *common, "--out", str(tmp_path / "ok"), "--space", str(space),
                                  "--trials", "2", "--sampler", "grid"])
    assert result.exit_code == 0, result.output
    assert result.output.count(" at step ") == 2 and "best: trial" in result.output  # complete, or pruned

    def error(space_text, *extra):
        space.write_text(space_text)
        result = runner.invoke(main, ["tune", *common, "--out", str(tmp_path / "bad"), "--space", str(space),
                                      "--trials", "2", *extra])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        return result.output

    assert "unknown settings ['colour']" in error("colour: [red]\n")
    assert "the range 0.01..0.001 is empty" in error("lr: {low: 1.0e-2, high: 1.0e-3}\n")
    assert "a log range needs positive bounds" in error("weight_decay: {low: 0.0, high: 0.1, log: true}\n")
    assert "--sampler grid tries every value: give lr as a list" in error("lr: {low: 1.0e-3, high: 1.0e-2}\n",
                                                                          "--sampler", "grid")
    missing_dir = f"sqlite:///{tmp_path}/no/such/dir/study.db"
    assert "cannot open the study storage" in error("lr: [0.001]\n", "--storage", missing_dir)
    assert "cannot open the study storage postgresql://me:***@localhost" in error(
        "lr: [0.001]\n", "--storage", "postgresql://me:secret@localhost:1/db")
    assert "give --val-fraction above 0" in error("lr: [0.001]\n", "--val-fraction", "0")


def test_the_first_rung_comes_after_the_warmup_and_a_step_beyond_it():
    first_rung = tuning.first_rung
    assert first_rung(75, 3, OptimConfig()) == 4  # the demo store's 75 steps: warmup 0.05 = 3 steps, then 1
    assert first_rung(75, 3, OptimConfig(warmup=0.0)) == 2  # total / 27
    assert first_rung(10_000, 3, OptimConfig(warmup=0.0)) == 370
    assert first_rung(10, 3, OptimConfig(warmup=0.0)) == 2  # a step at the full lr, and one more
