"""The `train_side` command line: its options, its errors, and a store served over HTTP."""

from dataclasses import asdict

import click
import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import train_side.cli
from tests.train_side.tiny_store import D, write_tiny_store
from train_side import checkpoint
from train_side.cli import main, train_cmd
from train_side.config import DataConfig, GenerateConfig, OptimConfig
from train_side.training.sweep import GridError, parse_grid_options


def test_training_from_an_http_url_matches_training_from_the_local_store(tmp_path, http_server):
    write_tiny_store(tmp_path / "served" / "tiny.zarr")
    url = f"{http_server(tmp_path / 'served').url}/tiny.zarr"
    options = ["--epochs", "2", "--side-width", "16", "--heads", "2", "--token-budget", "128", "--device", "cpu"]
    for name, store in (("remote", url), ("local", tmp_path / "served" / "tiny.zarr")):
        result = CliRunner().invoke(main, ["train", str(store), "--out", str(tmp_path / name), *options])
        assert result.exit_code == 0, result.output
    remote, local = load_file(tmp_path / "remote" / "side.safetensors"), load_file(tmp_path / "local" / "side.safetensors")
    assert remote.keys() == local.keys() and all(remote[k].equal(local[k]) for k in remote)
    assert checkpoint.load_config(tmp_path / "remote")["store"]["location"] == url
    assert any((tmp_path / "read-cache").iterdir())

    loss = CliRunner().invoke(main, ["loss", str(tmp_path / "remote"), url, "--device", "cpu", "--cache-dir", "off"])
    assert loss.exit_code == 0 and "teacher-forced loss" in loss.output


def test_every_flag_is_a_dataclass_field_with_its_default():
    params = {p.name: p for p in train_cmd.params}
    assert params["lr"].default == OptimConfig().lr and params["data_seed"].default == DataConfig().seed
    assert "--heads" in params["n_heads"].opts and "--no-mix" in params["mix"].secondary_opts
    assert {"n_layers", "hidden_size", "intermediate_size"}.isdisjoint(params)  # read from the store


def test_eval_and_generate_take_every_generation_setting_with_its_one_default():
    for command, skipped in (("eval", set()), ("generate", {"batch_size"})):  # generate streams one prompt at a time
        defaults = {p.name: p.default for p in main.commands[command].params}
        expected = {k: v for k, v in asdict(GenerateConfig()).items() if k not in skipped}
        assert {k: defaults[k] for k in expected} == expected and not skipped & defaults.keys()
    assert GenerateConfig().decoding == "greedy"
    assert GenerateConfig.resolve(temperature=0.7, top_k=20).decoding == "T=0.7, top_p=1.0, top_k=20"
    assert GenerateConfig.resolve(min_new_tokens=4, repetition_penalty=1.2).decoding == \
        "greedy, min_new_tokens=4, repetition_penalty=1.2"


def test_a_grid_key_may_be_any_name_of_a_flag():
    assert parse_grid_options(["heads=2,4"]) == parse_grid_options(["n-heads=2,4"]) == {"n_heads": [2, 4]}
    with pytest.raises(GridError, match="twice"):
        parse_grid_options(["heads=2", "n_heads=4"])
    with pytest.raises(GridError, match="sweepable: .*n_heads"):
        parse_grid_options(["colour=red"])
    # a data setting is known by its own option's name: --seed is the initialisation's, --data-seed the data's
    assert parse_grid_options(["seed=1", "data-seed=2"]) == {"seed": [1], "data_seed": [2]}


def test_sweep_over_heads_from_the_command_line(tmp_path, tiny_store):
    result = CliRunner().invoke(main, ["sweep", str(tiny_store), "--out", str(tmp_path / "s"), "--side-width", "16",
                                       "--epochs", "1", "--token-budget", "128", "--device", "cpu",
                                       "--grid", "heads=2,4"])
    assert result.exit_code == 0, result.output
    assert [checkpoint.load_config(tmp_path / "s" / f"n_heads-{n}")["side"]["n_heads"] for n in (2, 4)] == [2, 4]


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, tiny_store, monkeypatch):
    args = ["train", str(tiny_store), "--out", str(tmp_path / "t"), "--reduction", "3", "--device", "cpu"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and refused.output == f"Error: hidden_size {D} is not divisible by reduction 3\n"

    def bug(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(train_side.cli, "train", bug)
    crashed = CliRunner().invoke(main, args)
    assert isinstance(crashed.exception, ValueError) and "a bug" not in crashed.output


def test_probe_prints_a_row_per_layer_and_refuses_layers_the_store_lacks(tmp_path, tiny_store):
    args = ["probe", str(tiny_store), "--out", str(tmp_path / "p"), "--device", "cpu", "--epochs", "1"]
    result = CliRunner().invoke(main, [*args, "--layers", "0,4"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]  # under the header
    assert [row.split("|")[1].strip() for row in rows] == ["0", "4"]
    missing = CliRunner().invoke(main, [*args, "--layers", "0,9"])
    assert missing.exit_code == 1 and missing.output.startswith("Error: the store holds no hidden states [9]")
    bad = CliRunner().invoke(main, [*args, "--layers", "top"])
    assert bad.exit_code == 2 and "layer numbers separated by commas" in bad.output


def test_threads_sets_torchs_threads_for_the_run(tmp_path, tiny_store):
    import torch

    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(main, ["train", str(tiny_store), "--out", str(tmp_path / "t"), "--side-width", "16",
                                           "--heads", "2", "--epochs", "1", "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    refused = CliRunner().invoke(main, ["train", str(tiny_store), "--out", str(tmp_path / "u"), "--threads", "-1"])
    assert refused.exit_code == 2 and "--threads" in refused.output


def test_every_option_of_eval_and_generate_says_what_it_does():
    for command in ("eval", "generate"):
        undocumented = [p.name for p in main.commands[command].params if isinstance(p, click.Option) and not p.help]
        assert not undocumented, f"{command}: {undocumented}"


def test_exit_codes_usage_errors_2_the_rest_1(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["eval", str(tmp_path / "none")]).exit_code == 1  # no checkpoint there: a UserError
    assert runner.invoke(main, ["generate", str(tmp_path / "none"), "hi"]).exit_code == 1
    assert runner.invoke(main, ["eval"]).exit_code == 2  # click: a missing argument
    assert runner.invoke(main, ["eval", str(tmp_path), "--no-such-option"]).exit_code == 2
    assert runner.invoke(main, ["eval", str(tmp_path), "--limit", "many"]).exit_code == 2
    assert runner.invoke(main, ["generate", str(tmp_path), "hi", "--repetition-penalty", "0"]).exit_code == 2


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_a_runs_train_config_trains_it_again_and_the_command_line_overrides_it(tmp_path, tiny_store):
    run_cli("train", tiny_store, "--out", tmp_path / "a", "--side-width", "16", "--heads", "2", "--epochs", "1",
            "--token-budget", "128", "--lr", "0.01", "--data-seed", "3", "--no-mix")
    saved = yaml.safe_load((tmp_path / "a" / "train_config.yaml").read_text())
    assert saved["store"] == str(tiny_store) and saved["out"] == str(tmp_path / "a")
    assert (saved["side_width"], saved["n_heads"], saved["lr"], saved["data_seed"], saved["mix"]) == (16, 2, 0.01, 3, False)
    run_cli("train", "--config", tmp_path / "a" / "train_config.yaml", "--out", tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "side.safetensors"), load_file(tmp_path / "b" / "side.safetensors")
    assert all(a[k].equal(b[k]) for k in a)  # the same run again
    run_cli("train", "--config", tmp_path / "a" / "train_config.yaml", "--out", tmp_path / "c", "--lr", "0.02")
    c = checkpoint.load_config(tmp_path / "c")
    assert c["optim"]["lr"] == 0.02 and c["data"]["seed"] == 3 and c["side"]["mix"] is False


def test_a_config_file_takes_any_name_of_an_option(tmp_path, tiny_store):
    (tmp_path / "run.yaml").write_text(f"store: {tiny_store}\nside-width: 16\nheads: 2\ntoken_budget: 128\n"
                                       "epochs: 1\ngrad-accum: 2\ndevice: cpu\n")
    run_cli("train", "--config", tmp_path / "run.yaml", "--out", tmp_path / "r")
    saved = checkpoint.load_config(tmp_path / "r")
    assert (saved["side"]["n_heads"], saved["data"]["token_budget"], saved["data"]["grad_accum"]) == (2, 128, 2)
    (tmp_path / "bad.yaml").write_text("lr: 0.01\ncolour: red\n")
    bad = CliRunner().invoke(main, ["train", str(tiny_store), "--out", str(tmp_path / "x"), "--config",
                                    str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "sets colour, which are not options of `train`" in bad.output


def test_a_sweeps_config_holds_its_grid_and_trains_it_again(tmp_path, tiny_store):
    (tmp_path / "sweep.yaml").write_text(f"store: {tiny_store}\nside_width: 16\nheads: 2\nepochs: 1\n"
                                         "token_budget: 128\ngrid:\n  lr: [0.001, 0.003]\n  taps: [[2, 4], [4]]\n")
    first = run_cli("sweep", "--config", tmp_path / "sweep.yaml", "--out", tmp_path / "s", "--grid", "lr=0.01")
    assert "lr-0.01_taps-2.4" in first.stdout and "lr-0.001" not in first.stdout  # the command line's lr wins
    saved = yaml.safe_load((tmp_path / "s" / "sweep_config.yaml").read_text())
    assert saved["grid"] == {"lr": [0.01], "taps": [[2, 4], [4]]}
    run_cli("sweep", "--config", tmp_path / "s" / "sweep_config.yaml", "--out", tmp_path / "t")
    for name in ("lr-0.01_taps-2.4", "lr-0.01_taps-4"):
        a, b = (load_file(tmp_path / d / name / "side.safetensors") for d in ("s", "t"))
        assert all(a[k].equal(b[k]) for k in a)
        run_cli("train", "--config", tmp_path / "s" / name / "train_config.yaml", "--out", tmp_path / "alone" / name)
        alone = load_file(tmp_path / "alone" / name / "side.safetensors")
        assert all(a[k].equal(alone[k]) for k in a)  # each run's own config trains it alone
