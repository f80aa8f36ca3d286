"""--log: TensorBoard event files beside metrics.jsonl; trackio only when installed."""

import json
import sys

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.train_side.crash import crash_at_step
from train_side.cli import main
from train_side.config import DataConfig
from train_side.training.train import train

SMALL = {"side_width": 16, "n_heads": 2}


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def metrics(run_dir, key: str) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if key in m]


def test_tensorboard_events_hold_what_metrics_jsonl_holds(tmp_path, tiny_store):
    run = train(tiny_store, tmp_path / "r", side=SMALL, data=DataConfig(epochs=2, token_budget=96, eval_every=3),
                progress=False, log="tensorboard")
    assert list((tmp_path / "r").glob("events.out.tfevents.*"))
    logged = scalars(tmp_path / "r")
    assert {"loss", "lr", "tokens", "tokens_per_s", "val_loss"} <= logged.keys()
    for key in ("loss", "val_loss"):
        assert [s for s, _ in logged[key]] == [s for s, _ in metrics(tmp_path / "r", key)]
        assert [v for _, v in logged[key]] == pytest.approx([v for _, v in metrics(tmp_path / "r", key)])
    assert len(logged["loss"]) == run.step


def test_a_resumed_run_drops_the_events_after_its_checkpoint(tmp_path, tiny_store):
    data = DataConfig(epochs=2, token_budget=96, save_every=4)
    with crash_at_step(6):
        train(tiny_store, tmp_path / "r", side=SMALL, data=data, progress=False, log="tensorboard")
    run = train(tiny_store, tmp_path / "r", side=SMALL, data=data, progress=False, log="tensorboard", resume=True)
    steps = [s for s, _ in scalars(tmp_path / "r")["loss"]]
    assert steps == list(range(1, run.step + 1))  # steps 5 and 6 logged once, by the resumed run


def test_trackio_not_installed_is_a_one_line_error_saying_what_to_install(tmp_path, tiny_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)  # import trackio raises ImportError
    result = CliRunner().invoke(main, ["train", str(tiny_store), "--out", str(tmp_path / "r"), "--side-width", "16",
                                       "--heads", "2", "--epochs", "1", "--log", "trackio"])
    assert result.exit_code == 1
    assert result.output == "Error: --log trackio needs the trackio package: pip install trackio\n"
