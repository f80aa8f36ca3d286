"""`train_side` from a store served over HTTP (a local server on 127.0.0.1)."""

from click.testing import CliRunner
from safetensors.torch import load_file

from tests.train_side.tiny_store import write_tiny_store
from train_side import checkpoint
from train_side.cli import main


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
