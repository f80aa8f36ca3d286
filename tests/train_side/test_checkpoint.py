import json

import pytest

from train_side import checkpoint
from train_side.checkpoint import Checkpoint, CheckpointError
from train_side.config import DataConfig, OptimConfig
from train_side.training.train import train

SMALL = {"side_width": 16, "n_heads": 2}


def test_a_checkpoint_is_a_typed_versioned_record_that_round_trips(tmp_path, tiny_store):
    train(tiny_store, tmp_path / "run", side=SMALL, optim=OptimConfig(lr=1e-3), data=DataConfig(epochs=1),
          progress=False)
    loaded = Checkpoint.load(tmp_path / "run")
    assert loaded.version == checkpoint.VERSION and loaded.optim.lr == 1e-3 and loaded.side.width == 16
    assert loaded.store.provenance.model.id == "tiny" and loaded.store.codec["name"] == "fp32"
    assert Checkpoint.from_json(json.loads(json.dumps(loaded.to_json()))) == loaded
    assert loaded.to_json() == checkpoint.load_config(tmp_path / "run")  # what is on disk, key for key


def test_a_checkpoint_without_a_version_is_version_one_and_a_newer_one_is_refused(tmp_path, tiny_store):
    train(tiny_store, tmp_path / "run", side=SMALL, data=DataConfig(epochs=1), progress=False)
    document = checkpoint.load_config(tmp_path / "run")
    del document["version"]
    assert Checkpoint.from_json(document).version == 1
    with pytest.raises(CheckpointError, match="upgrade"):
        Checkpoint.from_json(document | {"version": 2})
    with pytest.raises(CheckpointError, match="holds no side checkpoint"):
        Checkpoint.load(tmp_path)
