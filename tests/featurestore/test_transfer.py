"""`featurestore push` / `pull`: object-by-object copies, verified on arrival, complete last."""

import json
import shutil

import pytest
from click.testing import CliRunner

from featurestore import FeatureStore, StoreError, verify
from featurestore.cli import main
from featurestore.transfer import copy_store
from tests.featurestore import synth


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    synth.write_store(root / "a.zarr", synth.token_table())
    return root


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_complete_copy(copy, original) -> None:
    assert files(copy) == files(original)
    assert verify(copy) == [] and FeatureStore.open(copy).complete


def chunk_gets(server) -> list[str]:
    return [path for method, path in server.requests if method == "GET" and "/c/" in path]


def test_pull_over_http_gives_an_identical_verified_complete_store(source, http_server, tmp_path):
    server = http_server(source)
    (tmp_path / "stores").mkdir()
    result = run("pull", f"{server.url}/a.zarr", tmp_path / "stores")  # into a directory, like cp
    assert result.exit_code == 0, result.output
    assert "every checksum matches" in result.output and "is complete" in result.output
    assert_complete_copy(tmp_path / "stores" / "a.zarr", source / "a.zarr")
    again = run("pull", f"{server.url}/a.zarr", tmp_path / "stores" / "a.zarr")
    assert again.exit_code == 0 and "already holds this complete store" in again.output


def test_a_corrupt_object_fails_the_pull_by_name_and_a_rerun_resumes(source, http_server, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(source / "a.zarr", served / "a.zarr")
    victim = served / "a.zarr" / "layers" / "1" / "codes" / "c" / "2" / "0"
    good = victim.read_bytes()
    victim.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    server = http_server(served)
    result = run("pull", f"{server.url}/a.zarr", tmp_path / "copy.zarr")
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()[-1:]
    assert line.startswith("Error: layers/1/codes/c/2/0: checksum mismatch (shard 2 (tokens")
    assert "left incomplete; re-run to resume" in line
    assert json.loads((tmp_path / "copy.zarr" / "zarr.json").read_text())["attributes"]["complete"] is False
    assert not (tmp_path / "copy.zarr" / "layers" / "1" / "codes" / "c" / "2" / "0").exists()
    assert not (tmp_path / "copy.zarr" / "manifest" / "shard-000002").exists()  # that shard is not done
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore.open(tmp_path / "copy.zarr")

    victim.write_bytes(good)
    server.requests.clear()
    assert run("pull", f"{server.url}/a.zarr", tmp_path / "copy.zarr").exit_code == 0
    assert chunk_gets(server) == ["/a.zarr/layers/1/codes/c/2/0"]  # everything else was already there
    assert_complete_copy(tmp_path / "copy.zarr", source / "a.zarr")


def test_an_interrupted_pull_resumes_where_it_stopped(source, http_server, tmp_path):
    server = http_server(source)
    calls = []

    def cut(nbytes, total):
        calls.append(nbytes)
        if len(calls) == 60:
            raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError, match="connection lost"):
        copy_store(f"{server.url}/a.zarr", tmp_path / "copy.zarr", progress=cut)
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore.open(tmp_path / "copy.zarr")
    present = {key for key in files(tmp_path / "copy.zarr") if "/c/" in key}
    assert present and len(present) < sum("/c/" in key for key in files(source / "a.zarr"))

    server.requests.clear()
    done = copy_store(f"{server.url}/a.zarr", tmp_path / "copy.zarr")
    assert done.complete and done.present >= len(present)
    assert not present & {path.removeprefix("/a.zarr/") for path in chunk_gets(server)}
    assert_complete_copy(tmp_path / "copy.zarr", source / "a.zarr")


def test_push_to_a_file_url(source, tmp_path):
    result = run("push", source / "a.zarr", f"file://{tmp_path}/pushed.zarr")
    assert result.exit_code == 0, result.output
    assert_complete_copy(tmp_path / "pushed.zarr", source / "a.zarr")


def test_incomplete_sources_and_foreign_destinations_are_refused(source, tmp_path):
    partial = tmp_path / "partial.zarr"
    shutil.copytree(source / "a.zarr", partial)
    shutil.rmtree(partial / "manifest" / "shard-000003")
    meta = json.loads((partial / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (partial / "zarr.json").write_text(json.dumps(meta))
    refused = run("push", partial, tmp_path / "p1.zarr")
    assert refused.exit_code == 1 and "incomplete" in refused.output and "--allow-incomplete" in refused.output
    allowed = run("push", "--allow-incomplete", partial, tmp_path / "p1.zarr")
    assert allowed.exit_code == 0 and "incomplete, like its source" in allowed.output
    assert not FeatureStore.open(tmp_path / "p1.zarr", allow_incomplete=True).complete
    assert verify(tmp_path / "p1.zarr")[0].what.startswith("missing manifest")

    synth.write_store(tmp_path / "other.zarr", synth.token_table(seed=5))
    clash = run("push", source / "a.zarr", tmp_path / "other.zarr")
    assert clash.exit_code == 1 and "holds another store" in clash.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    assert "is not a feature store" in run("push", source / "a.zarr", tmp_path / "junk").output


def test_a_copy_into_its_own_source_or_over_it_is_refused(source, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(source / "a.zarr", store)
    before = sorted(files(store))
    inside = run("push", store, store / "sub.zarr")
    assert inside.exit_code == 1 and "is inside" in inside.output and "outside it" in inside.output
    assert not (store / "sub.zarr").exists() and sorted(files(store)) == before
    around = run("push", store, f"file://{tmp_path}")  # a destination holding the source
    assert around.exit_code == 1 and f"{store} is inside" in around.output
