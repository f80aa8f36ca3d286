"""`train_side tune` workers sharing one SQLite study: each trial trained once by one of them, every
trial recorded, and a worker killed mid-study costs nothing (its trials are retried)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests import helpers
from tests.train_side.tiny_store import write_tiny_store
from train_side.config import DataConfig
from train_side.training.space import Search, parse_space
from train_side.training.tune import tune

REPO = Path(__file__).resolve().parents[2]
SPACE = "lr: {low: 1.0e-4, high: 3.0e-2, log: true}\n"
OPTIONS = ["--side-width", "16", "--heads", "2", "--token-budget", "96", "--val-fraction", "0.1", "--threads", "1",
           "--pruner", "none", "--heartbeat", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("tiny") / "tiny.zarr")


def worker(store, out, space, trials, *extra) -> subprocess.Popen:
    command = [sys.executable, "-c", "from train_side.cli import main; main()", "tune", str(store), "--out",
               str(out), "--space", str(space), "--trials", str(trials), *OPTIONS, *extra]
    return helpers.start(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trained_here(stdout: str) -> list[int]:
    """The trials a worker's lines say it finished."""
    return [int(n) for n in re.findall(r"\] trial (\d+) (?:complete|pruned) at step", stdout)]


def study_of(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def test_two_workers_share_one_study_each_trial_once_with_one_workers_results(tmp_path, store):
    lrs = [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 6e-3, 1e-2, 3e-2]
    out, space = tmp_path / "two", tmp_path / "space.yaml"
    space.write_text(SPACE)
    out.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name=out.name)
    for lr in lrs:  # the same trials for both studies, whoever trains them
        study.enqueue_trial({"lr": lr})
    workers = [worker(store, out, space, len(lrs), "--epochs", "8", "--parallel", "2") for _ in range(2)]
    stdouts = []
    for process in workers:
        stdout, stderr = helpers.finish(process, 600, "a tune worker")
        assert process.returncode == 0, stderr[-3000:]
        stdouts.append(stdout)
    mine, theirs = map(trained_here, stdouts)
    assert mine and theirs, "both workers trained trials"
    assert sorted(mine + theirs) == list(range(len(lrs)))  # each trial once, by one worker
    trials = study_of(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * len(lrs)  # every trial recorded
    assert {t.user_attrs["worker"].split(":")[1] for t in trials} == {str(p.pid) for p in workers}
    for t in trials:  # one writer each: no step trained twice
        metrics = (out / "trials" / f"{t.number:04d}" / "metrics.jsonl").read_text().splitlines()
        steps = [record["step"] for record in map(json.loads, metrics) if "loss" in record]
        assert steps == list(range(1, t.user_attrs["steps"] + 1))

    alone = optuna.create_study(storage=f"sqlite:///{tmp_path / 'one.db'}", study_name="one")
    for lr in lrs:
        alone.enqueue_trial({"lr": lr})
    tune(store, tmp_path / "one", parse_space({"lr": {"low": 1e-4, "high": 3e-2, "log": True}}),
         Search(trials=len(lrs), parallel=4, pruner="none"), storage=f"sqlite:///{tmp_path / 'one.db'}",
         study_name="one", side={"side_width": 16, "n_heads": 2},
         data=DataConfig(epochs=8, token_budget=96, val_fraction=0.1), progress=False)
    results = lambda trials: {t.params["lr"]: (t.value, t.user_attrs["steps"]) for t in trials}
    assert results(trials) == results(alone.trials)


def test_a_worker_killed_mid_study_costs_nothing_its_trials_are_retried(tmp_path, store):
    out, space = tmp_path / "killed", tmp_path / "space.yaml"
    space.write_text(SPACE)
    extra = ["--epochs", "20", "--parallel", "2", "--save-every", "10", "--sampler", "random"]
    victim = worker(store, out, space, 6, *extra)

    def training_in_victim():
        if not (out / "study.db").is_file():
            return None
        try:
            running = study_of(out).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - the study is still being created
            return None
        mine = [t for t in running if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        return mine if mine and all(rundir_step(out, t) >= 12 for t in mine) else None  # past a checkpoint

    killed = helpers.wait_until(training_in_victim, 300, "the first worker training its trials past a checkpoint",
                                interval=0.2)
    survivor = worker(store, out, space, 6, *extra)
    helpers.kill(victim)
    stdout, stderr = helpers.finish(survivor, 600, "the surviving tune worker")
    assert survivor.returncode == 0, stderr[-3000:]
    trials = study_of(out).trials
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 6  # nothing lost: the study holds its 6 trials
    for t in killed:
        assert trials[t.number].state == optuna.trial.TrialState.FAIL
        [retry] = [r for r in finished if r.system_attrs.get("failed_trial") == t.number]
        assert retry.params == t.params and retry.number in trained_here(stdout)
        metrics = (out / "trials" / f"{t.number:04d}" / "metrics.jsonl").read_text().splitlines()
        steps = [record["step"] for record in map(json.loads, metrics) if "loss" in record]
        assert steps == list(range(1, retry.user_attrs["steps"] + 1))  # resumed at its checkpoint, each step once


def rundir_step(out: Path, trial) -> int:
    """The last step a trial's run logged."""
    metrics = out / "trials" / f"{trial.number:04d}" / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return json.loads(lines[-1])["step"] if lines else 0
