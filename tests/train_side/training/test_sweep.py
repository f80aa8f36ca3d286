"""Sweeps: run names, a grid over data settings, old sweeps' directories, one progress line per run."""

import shlex

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import load_file

from tests.train_side.crash import crash_at_step
from train_side import checkpoint
from train_side.cli import main
from train_side.config import DataConfig, OptimConfig
from train_side.training.sweep import GridError, legacy_run_name, parse_grid_options, run_name, sweep
from train_side.training.train import train

SMALL = {"side_width": 16, "n_heads": 2}


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "side.safetensors")


@pytest.mark.parametrize("params, name", [
    ({"kind": "ladder", "lr": 0.003}, "kind-ladder_lr-0.003"),
    ({"n_heads": 2, "lr": 1e-5}, "n_heads-2_lr-1e-05"),
    ({"taps": [1, 3], "mix": False}, "taps-1.3_mix-False"),
    ({"weight_decay": -0.5}, "weight_decay-m0.5"),
    ({}, "run"),
])
def test_run_names_need_no_quoting_and_are_hub_repository_names(params, name):
    assert run_name(params) == name and shlex.quote(name) == name
    validate_repo_id(f"team/{name}")


def test_a_long_run_name_is_cut_to_the_hubs_limit_and_stays_unique():
    grid = {f"setting_{i}": 10**i for i in range(12)}
    names = {run_name(grid), run_name({**grid, "setting_11": 0})}
    assert len(names) == 2 and all(len(name) <= 96 for name in names)
    for name in names:
        validate_repo_id(f"team/{name}")


def test_a_grid_over_a_data_setting_trains_one_pass_per_value(tmp_path, tiny_store):
    data = DataConfig(epochs=1, token_budget=96)
    rows = sweep(tiny_store, tmp_path / "s", parse_grid_options(["epochs=1,2", "lr=1e-3,3e-3"]), side=SMALL,
                 data=data, progress=False)
    assert sorted(row["run"] for row in rows) == ["epochs-1_lr-0.001", "epochs-1_lr-0.003", "epochs-2_lr-0.001",
                                                   "epochs-2_lr-0.003"]
    steps = {row["run"]: row["steps"] for row in rows}
    assert steps["epochs-2_lr-0.003"] == 2 * steps["epochs-1_lr-0.003"]
    train(tiny_store, tmp_path / "alone", side=SMALL, optim=OptimConfig(lr=3e-3), data=DataConfig(epochs=2,
          token_budget=96), progress=False)
    inside, alone = weights(tmp_path / "s" / "epochs-2_lr-0.003"), weights(tmp_path / "alone")
    assert all(torch.equal(inside[k], alone[k]) for k in alone)  # as trained alone with its own data settings
    assert checkpoint.load_config(tmp_path / "s" / "epochs-2_lr-0.003")["data"]["epochs"] == 2


def test_a_sweep_written_with_the_old_run_names_still_resumes(tmp_path, tiny_store):
    data = DataConfig(epochs=2, token_budget=96, save_every=3)
    grid = {"lr": [1e-3, 3e-3]}
    sweep(tiny_store, tmp_path / "straight", grid, side=SMALL, data=data, progress=False)
    with crash_at_step(5):
        sweep(tiny_store, tmp_path / "old", grid, side=SMALL, data=data, progress=False)
    for lr in (0.001, 0.003):  # as an older version named them
        (tmp_path / "old" / run_name({"lr": lr})).rename(tmp_path / "old" / legacy_run_name({"lr": lr}))
    assert legacy_run_name({"lr": 0.001}) == "lr=0.001"
    rows = sweep(tiny_store, tmp_path / "old", grid, side=SMALL, data=data, progress=False, resume=True)
    assert {row["run"] for row in rows} == {"lr=0.001", "lr=0.003"}
    assert not (tmp_path / "old" / "lr-0.001").exists()  # the old directories were resumed, no new ones made
    for lr in (0.001, 0.003):
        straight = weights(tmp_path / "straight" / run_name({"lr": lr}))
        resumed = weights(tmp_path / "old" / legacy_run_name({"lr": lr}))
        assert all(torch.equal(straight[k], v) for k, v in resumed.items())


def test_a_sweep_shows_a_progress_line_per_run_and_prints_its_summary_best_first(tmp_path, tiny_store):
    result = CliRunner().invoke(main, ["sweep", str(tiny_store), "--out", str(tmp_path / "s"), "--side-width", "16",
                                       "--heads", "2", "--epochs", "6", "--token-budget", "96", "--eval-every", "2",
                                       "--early-stop", "2", "--grid", "lr=0.5,1e-2"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.replace("\r", "\n").splitlines()
    for name in ("lr-0.5 ", "lr-0.01"):
        assert any(line.startswith(name) and "loss=" in line for line in lines), name
    assert any(line.startswith("lr-0.5 ") and "stopped=early" in line for line in lines)
    table = result.stdout.splitlines()
    assert table[0].split()[:2] == ["best", "run"] and table[1].split()[:2] == ["*", "lr-0.01"]
    assert table[2].split()[0] == "lr-0.5"  # sorted by best validation loss, worst last
    again = CliRunner().invoke(main, ["sweep", str(tiny_store), "--out", str(tmp_path / "s"), "--grid", "lr=0.5"])
    assert again.exit_code == 1 and "already holds a sweep" in again.output


def test_an_unknown_grid_setting_names_the_sweepable_ones():
    with pytest.raises(GridError, match="sweepable: .*epochs.*grad_accum.*lr"):
        parse_grid_options(["colour=red"])
