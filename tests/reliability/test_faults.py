"""Faults around the store: a bad remote cache, a resume over damaged shards, a full disk, killed
writers, pulls and training runs, concurrent runs into one directory. Each ends in a clear error
or a correct result; nothing is marked complete that is not, nothing finished is lost."""

import errno
import json
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from zarr.storage import LocalStore

from featurestore import FeatureStore, StoreError, StoreWriter, verify
from featurestore.transfer import copy_store
from tests import helpers
from tests.featurestore import synth
from tests.reliability.faults import flip, read_everything, same

WRITER = """
import sys, time
from tests.featurestore import synth
from featurestore import StoreWriter
tokens = synth.token_table(n_examples=120)
data = synth.states(tokens)
with StoreWriter(sys.argv[1], synth.spec(), tokens, head=synth.head(), chunk_mb=0.004, resume=True) as w:
    for start in range(0, tokens.n_tokens, 97):
        w.write(start, {k: v[start:start + 97] for k, v in data.items()})
        time.sleep(0.01)
"""


def full_store(tmp_path, name="s.zarr"):
    path = tmp_path / name
    synth.write_store(path, synth.token_table(n_examples=40))
    return path


def test_a_bad_object_in_the_remote_read_cache_is_fetched_again(tmp_path, http_server):
    path = full_store(tmp_path)
    url = f"{http_server(tmp_path).url}/s.zarr"
    good = read_everything(url)
    cached = next((tmp_path / "read-cache").iterdir())
    flip(cached / "layers/1/codes/c/1/0")  # bit rot in the cache
    assert same(read_everything(url), good)


def test_a_bad_object_on_the_server_is_refused_then_read_once_fixed(tmp_path, http_server):
    path = full_store(tmp_path)
    url = f"{http_server(tmp_path).url}/s.zarr"
    pristine = (path / "layers/1/codes/c/1/0").read_bytes()
    flip(path / "layers/1/codes/c/1/0")
    with pytest.raises(StoreError, match="layers/1/codes/c/1/0"):
        read_everything(url)
    (path / "layers/1/codes/c/1/0").write_bytes(pristine)  # the server's copy is fixed
    assert same(read_everything(url), read_everything(path))


def test_a_refused_remote_object_is_never_cached_and_leaves_no_pending_reads(tmp_path, http_server):
    path = full_store(tmp_path)
    url = f"{http_server(tmp_path).url}/s.zarr"
    flip(path / "layers/1/codes/c/1/0")
    reader = "from tests.reliability.faults import read_everything; import sys; read_everything(sys.argv[1])"
    done = helpers.run([sys.executable, "-c", reader, url], timeout=120, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert done.returncode != 0 and "layers/1/codes/c/1/0" in done.stderr
    assert "Task was destroyed" not in done.stderr and "never awaited" not in done.stderr, done.stderr[-2000:]
    cached = next((tmp_path / "read-cache").iterdir())
    assert not (cached / "layers/1/codes/c/1/0").exists()  # refused: fetched, checked, not kept


def test_resume_rewrites_a_damaged_finished_shard(tmp_path):
    tokens, path = synth.token_table(n_examples=40), tmp_path / "s.zarr"
    data = synth.states(tokens)
    meta = [{"id": i, "final": str(i * 7)} for i in range(tokens.n_examples)]  # as synth.write_store's
    writer = StoreWriter(path, synth.spec(), tokens, meta=meta, head=synth.head(), chunk_mb=0.004)
    writer.write(0, {k: v[:600] for k, v in data.items()})  # a few shards finished, then "killed"
    flip(path / "layers/1/codes/c/1/0")
    synth.write_store(path, tokens, resume=True)
    assert FeatureStore.open(path).complete and verify(path) == []
    assert same(read_everything(path), read_everything(full_store(tmp_path, "reference.zarr")))


class FullDisk(LocalStore):
    """A local store whose disk fills up after ``budget`` more objects."""

    budget = 10**9

    async def set(self, key, value):
        if FullDisk.budget <= 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root / key))
        FullDisk.budget -= 1
        await super().set(key, value)


def test_a_full_disk_is_one_clear_error_and_resume_finishes(tmp_path, monkeypatch):
    from featurestore import storage

    monkeypatch.setattr(storage, "LocalStore", FullDisk)
    monkeypatch.setattr(FullDisk, "budget", 60)
    tokens, path = synth.token_table(n_examples=40), tmp_path / "s.zarr"
    with pytest.raises(StoreError, match="No space left on device.*--resume"):
        synth.write_store(path, tokens)
    assert not FeatureStore.open(path, allow_incomplete=True).complete
    monkeypatch.setattr(FullDisk, "budget", 10**9)
    synth.write_store(path, tokens, resume=True)
    assert verify(path) == []


def test_a_read_only_root_is_one_clear_error(tmp_path, monkeypatch):
    from pathlib import Path

    from featurestore import catalog

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(StoreError, match="choose a writable --root"):
        with catalog.lock(tmp_path, "f" * 64):
            pass


@pytest.mark.slow
def test_writers_killed_at_random_points_resume_to_the_same_store(tmp_path):
    reference = tmp_path / "reference.zarr"
    helpers.run([sys.executable, "-c", WRITER, str(reference)], timeout=120, check=True)
    path, rng = tmp_path / "s.zarr", random.Random(0)
    for _ in range(3):
        child = helpers.start([sys.executable, "-c", WRITER, str(path)])
        time.sleep(rng.uniform(0.5, 2.0))
        helpers.kill(child)  # SIGKILL: no cleanup of any kind
        if (path / "zarr.json").exists() and FeatureStore.open(path, allow_incomplete=True).complete:
            break
    if not FeatureStore.open(path, allow_incomplete=True).complete:
        helpers.run([sys.executable, "-c", WRITER, str(path)], timeout=120, check=True)
    assert verify(path) == []
    assert same(read_everything(path), read_everything(reference))


@pytest.mark.slow
def test_a_pull_killed_midway_resumes_to_a_complete_copy(tmp_path, http_server):
    source = full_store(tmp_path)
    url = f"{http_server(tmp_path).url}/s.zarr"
    dest = tmp_path / "pulled" / "s.zarr"
    pull = [sys.executable, "-c", "from featurestore.cli import main; main()", "pull", url, str(dest.parent)]
    child = helpers.start(pull)
    time.sleep(random.Random(1).uniform(0.3, 1.5))
    helpers.kill(child)
    if (dest / "zarr.json").exists():
        assert verify(dest) != [] or FeatureStore.open(dest).complete  # never complete with objects missing
    copy_store(url, dest)
    assert verify(dest) == [] and same(read_everything(dest), read_everything(source))
    shutil.rmtree(tmp_path / "read-cache", ignore_errors=True)
