"""User faults at the command line end in one line and a non-zero exit, never a traceback; training
run directories take one writer at a time and survive a kill before the first checkpoint."""

import sys
import time

import pytest
import torch
from click.testing import CliRunner

from tests import helpers
from tests.train_side.tiny_store import write_tiny_store
from train_side.cli import main as train_side
from train_side.training import rundir


def one_line_error(result, *phrases):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception) or \
        isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and all(p in lines[0] for p in phrases), result.output


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(write_tiny_store(tmp_path_factory.mktemp("tiny") / "tiny.zarr", n_examples=24))


SMALL = ["--reduction", "4", "--every", "2", "--token-budget", "128"]


@pytest.mark.parametrize("args, phrase", [
    (["train", "{store}", "--out", "{out}", "--epochs", "0"], "--epochs"),
    (["train", "{store}", "--out", "{out}", "--token-budget", "0"], "--token-budget"),
    (["train", "{store}", "--out", "{out}", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "{store}", "--out", "{out}", "--reduction", "-2"], "--reduction"),
    (["sweep", "{store}", "--out", "{out}", "--grid", "reduction=-2"], "--grid reduction"),
    (["sweep", "{store}", "--out", "{out}", "--grid", "lr=abc"], "lr"),
    (["sweep", "{store}", "--out", "{out}", "--grid", "heads=two"], "heads"),
])
def test_bad_training_options_are_refused_at_the_command_line(store, tmp_path, args, phrase):
    out = tmp_path / "run"
    result = CliRunner().invoke(train_side, [a.format(store=store, out=out) for a in args])
    one_line_error(result, phrase)
    assert not out.exists()  # nothing left behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(store, tmp_path):
    one_line_error(CliRunner().invoke(train_side, ["train", store, "--out", str(tmp_path / "r"), "--device", "cuda"]),
                   "no usable CUDA")


def test_bad_extraction_options_are_refused_at_the_command_line():
    from extract.cli import main as extract

    one_line_error(CliRunner().invoke(extract, ["--chunk-mb", "-1"]), "--chunk-mb")
    one_line_error(CliRunner().invoke(extract, ["--token-budget", "0"]), "--token-budget")


def test_a_non_utf8_dataset_file_is_one_line(tmp_path):
    from extract.errors import DataError  # noqa: F401 - the error the loader raises
    from extract.tasks.datasets import load_examples

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"question": "\xff\xfe", "answer": "1"}\n')
    with pytest.raises(Exception, match="not UTF-8") as caught:
        load_examples(str(bad), "train")
    from featurestore.errors import UserError

    assert isinstance(caught.value, UserError)


def test_a_second_run_into_a_held_directory_is_refused_naming_the_holder(store, tmp_path):
    out = tmp_path / "run"
    held = rundir.claim(out)  # another run is writing here
    try:
        result = CliRunner().invoke(train_side, ["train", store, "--out", str(out), *SMALL])
        one_line_error(result, "being written by another training run", "pid")
    finally:
        held.release()
    assert CliRunner().invoke(train_side, ["train", store, "--out", str(out), "--epochs", "1", *SMALL]).exit_code == 0


def test_the_token_budget_is_part_of_the_fingerprint():
    from extract.provenance import Provenance

    one, other = (Provenance(model={}, dataset={}, token_budget=b).source() for b in (4096, 512))
    assert one != other


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_again_or_resumes(store, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-c", "from train_side.cli import main; main()", "train", store, "--out", str(out), "--epochs", "1", *SMALL]
    child = helpers.start(command)
    helpers.wait_until(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size,
                       120, "the first logged step")
    helpers.kill(child)  # SIGKILL before the end of the epoch: no checkpoint yet
    assert not rundir.has_checkpoint(out)
    resumed = helpers.run([*command, "--resume"], timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = helpers.run(command, timeout=300, capture_output=True, text=True)
    assert again.returncode != 0 and "already holds a training run" in again.stderr
    assert "Traceback" not in again.stderr


def test_every_file_of_a_run_takes_the_process_umask(store, tmp_path):
    """A teammate reads a run on a shared disk: no file is written 0600 (safetensors' own mode)."""
    import os

    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(train_side, ["train", store, "--out", str(tmp_path / "run"), "--epochs", "1",
                                                 "--keep-resume", *SMALL])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    modes = {str(p.relative_to(tmp_path / "run")): p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*")
             if p.is_file()}
    saved = ("side.safetensors", "side_config.json", "resume.pt", "best/side.safetensors", "best/side_config.json")
    assert {modes[name] for name in saved} == {0o644}, modes


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_refused_before_the_backbone_loads(tmp_path, prompt):
    result = CliRunner().invoke(train_side, ["generate", str(tmp_path / "no-run-needed"), prompt])
    one_line_error(result, "a prompt is empty")


def test_an_extraction_root_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from extract.cli import main as extract

    (tmp_path / "a-file").write_text("")
    one_line_error(CliRunner().invoke(extract, ["--root", str(tmp_path / "a-file")]), "is a file, not a directory")

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    one_line_error(CliRunner().invoke(extract, ["--root", str(tmp_path / "new" / "stores")]),
                   "cannot create --root", "Read-only file system")


def test_resume_with_other_settings_names_each_one_and_changes_nothing(store, tmp_path):
    run = str(tmp_path / "run")
    first = CliRunner().invoke(train_side, ["train", store, "--out", run, "--epochs", "1", *SMALL])
    assert first.exit_code == 0, first.output
    before = (tmp_path / "run" / "side_config.json").read_text()
    for changed, phrase in ((["--lr", "0.01"], "--lr 0.003 -> 0.01"), (["--reduction", "8"], "--reduction 4 -> 8")):
        args = ["train", store, "--out", run, "--epochs", "1", *SMALL, "--resume", *changed]
        one_line_error(CliRunner().invoke(train_side, args), "other settings", phrase, "new --out")
    assert (tmp_path / "run" / "side_config.json").read_text() == before  # the run's record tells no lie
    same = CliRunner().invoke(train_side, ["train", store, "--out", run, "--epochs", "1", *SMALL, "--resume",
                                           "--eval-every", "3"])  # when to validate may change
    assert same.exit_code == 0, same.output


def test_ctrl_c_saves_every_run_at_its_last_finished_step_and_says_how_to_resume(store, tmp_path):
    import json
    import signal
    import subprocess

    out = tmp_path / "run"
    command = [sys.executable, "-c", "from train_side.cli import main; main()", "train", store, "--out", str(out),
               "--epochs", "10", *SMALL]
    child = helpers.start(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    helpers.wait_until(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 200,
                       120, "a few logged steps")
    child.send_signal(signal.SIGINT)
    _, stderr = helpers.finish(child, 120, "training after Ctrl-C")
    assert child.returncode == 1 and "Traceback" not in stderr, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("Error: interrupted: 1 run(s) saved at step ") and "--resume" in line, line
    step = int(line.split("saved at step ")[1].split()[0])
    assert json.loads((out / "side_config.json").read_text())["step"] == step > 0
    resumed = helpers.run([*command, "--resume"], timeout=600, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_a_max_length_beyond_the_backbones_context_is_refused_before_weights_load(tiny_llama, tmp_path):
    from extract.cli import main as extract

    args = ["--model", str(tiny_llama), "--dataset", "arith", "--limit", "4", "--root", str(tmp_path)]
    for more in ([], ["--dry-run"]):
        one_line_error(CliRunner().invoke(extract, [*args, "--max-length", "100000", *more]),
                       "--max-length 100000 is beyond the backbone's context of 512 tokens")
    assert not list(tmp_path.iterdir())  # nothing written
