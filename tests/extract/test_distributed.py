"""Distributed extraction (2 CPU ranks over gloo) and concurrent extracts of one store: both give
exactly the store of one plain run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.distributed import DistributedError, Ranks
from extract.run import extract
from featurestore import FeatureStore, Geometry, catalog, verify
from tests import helpers
from tests.featurestore.synth import arrays

REPO = Path(__file__).resolve().parents[2]
SETTINGS = dict(limit=40, codec="fp32", chunk_mb=0.04, token_budget=600)  # ~8k tokens in ~33 shards
OPTIONS = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    """One plain single-process extraction (one thread, as every rank here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract(str(tiny_llama), root=tmp_path_factory.mktemp("single"), progress=False, **SETTINGS)
    finally:
        torch.set_num_threads(threads)


def assert_same_store(path: Path, reference) -> None:
    x, y = arrays(path), arrays(reference.store)
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    store, expected = FeatureStore.open(path), FeatureStore.open(reference.store)
    assert store.complete and store.attrs["fingerprint"] == reference.fingerprint
    assert store.attrs["stats"]["layers"] == expected.attrs["stats"]["layers"]
    assert path.name == reference.store.name and verify(path) == []


@pytest.mark.parametrize("n_tokens, shard_tokens, world", [(1000, 100, 2), (1050, 100, 3), (90, 100, 2), (2500, 256, 4)])
def test_each_rank_gets_a_contiguous_block_balanced_by_tokens(n_tokens, shard_tokens, world):
    geometry = Geometry(n_tokens, shard_tokens // 2, shard_tokens)
    blocks = [Ranks(r, world).shards(geometry) for r in range(world)]
    assert [j for block in blocks for j in block] == list(range(geometry.n_shards))
    tokens = [sum(np.diff(geometry.shard_range(j))[0] for j in block) for block in blocks]
    assert max(tokens) - min(tokens) <= shard_tokens


def test_each_rank_takes_its_own_gpu_and_no_two_ranks_share_one():
    assert Ranks(1, 2, 1).device("cpu") == "cpu" and Ranks().device("cuda:3") == "cuda:3"
    with pytest.raises(DistributedError, match="rank r takes cuda:LOCAL_RANK"):
        Ranks(1, 2, 1).device("cuda:0")


@pytest.mark.slow
def test_torchrun_two_ranks_write_the_single_process_store(tmp_path, tiny_llama, reference):
    """The `extract` command under torchrun: gloo on CPU, rank 0 reports alone."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "extract", "--model", str(tiny_llama), "--root", str(tmp_path), *OPTIONS]
    done = helpers.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(f"extracted {SETTINGS['limit']} examples") == 1 and "rank 0 of 2" in done.stderr
    [store] = tmp_path.glob("*.zarr")
    assert_same_store(store, reference)
    assert FeatureStore.open(store).attrs["stats"]["extract_ranks"] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_rank_runs(rank: int, port: int, model: str, root: str, out: str) -> None:
    """A rank (spawned) inside a process group set up by its caller: an extraction in which rank 1
    fails after a few shards, then a resume, then the same extraction again (a cache hit that
    must not load the model). Each outcome, and what the store holds after it, go to
    out/rank<r>.json."""
    import torch.distributed as dist

    from extract import run
    from extract.backbones import BackboneSource

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    outcomes, original = [], run.extract_batches
    if rank == 1:
        run.extract_batches = lambda *args: original(*args[:5], _fail_after(2000))
    for step in ("fail", "resume", "again"):
        if step == "again":
            BackboneSource.load = lambda self: pytest.fail("a cache hit loaded the model")
        try:
            result = extract(model, root=root, resume=step == "resume", progress=False, **SETTINGS)
            outcomes.append({"cached": result.cached, "computed": result.computed_tokens})
        except Exception as e:  # noqa: BLE001 - reported to the test
            outcomes.append({"error": f"{type(e).__name__}: {e}"})
        run.extract_batches = original
        outcomes[-1]["store"] = _written(root)  # every rank's writes end before extract() returns
    Path(out, f"rank{rank}.json").write_text(json.dumps(outcomes))
    dist.destroy_process_group()


def _fail_after(n_tokens: int):
    seen = [0]

    def progress(n: int) -> None:
        seen[0] += n
        if seen[0] > n_tokens:
            raise RuntimeError("injected failure")

    return progress


def _written(root: str) -> dict:
    [store] = Path(root).glob("*.zarr")
    shards = sorted(int(p.parent.name.split("-")[1]) for p in store.glob("manifest/shard-*/zarr.json"))
    return {"complete": FeatureStore.open(store, allow_incomplete=True).complete, "shards": shards}


@pytest.mark.slow
def test_a_failed_rank_leaves_the_store_incomplete_and_resume_completes_it(tmp_path, tiny_llama, reference):
    root = tmp_path / "root"
    spawned = torch.multiprocessing.spawn(two_rank_runs, args=(free_port(), str(tiny_llama), str(root), str(tmp_path)),
                                          nprocs=2, join=False)
    helpers.join_spawned(spawned, 300, "the two spawned ranks")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    failed, resumed, again = rank0
    assert rank1[0]["error"] == "RuntimeError: injected failure"
    assert failed["error"].startswith("DistributedError: rank 1 failed: RuntimeError: injected failure")
    assert "rerun with --resume" in failed["error"]
    geometry = FeatureStore.open(next(root.glob("*.zarr"))).geometry
    first, second = (set(Ranks(r, 2).shards(geometry)) for r in (0, 1))
    assert not failed["store"]["complete"] and first < set(failed["store"]["shards"]) < first | second
    assert rank1[1] == resumed and not resumed["cached"] and 0 < resumed["computed"] < reference.n_tokens / 2
    assert rank1[2] == again and again["cached"] and again["store"]["complete"]
    [store] = root.glob("*.zarr")
    assert_same_store(store, reference)
    assert FeatureStore.open(store).attrs["stats"]["extract_tokens"] == resumed["computed"]


@pytest.mark.slow
def test_concurrent_extracts_of_one_store_compute_it_once(tmp_path, tiny_llama, reference):
    """Both wait on the lock (held here), then one computes and the other finds its store."""
    root = tmp_path / "root"
    command = [sys.executable, "-m", "extract", "--model", str(tiny_llama), "--root", str(root), *OPTIONS]
    logs = [tmp_path / f"err{i}.txt" for i in range(2)]
    with catalog.lock(root, reference.fingerprint) as lock:
        runs = [helpers.start(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
                for log in logs]

        def both_wait():
            if all("another run is extracting this fingerprint" in log.read_text() for log in logs):
                return True
            assert all(run.poll() is None for run in runs), [log.read_text() for log in logs]
            return False

        helpers.wait_until(both_wait, 120, "both extractions to wait on the lock", interval=0.05)
    outputs = sorted(helpers.finish(run, 120, "an extraction after the lock was released")[0] for run in runs)
    assert [run.returncode for run in runs] == [0, 0]
    assert outputs[0].startswith("cache hit: ") and outputs[1].startswith(f"extracted {SETTINGS['limit']} examples")
    assert all(f"(lock {lock})" in log.read_text() for log in logs)
    [store] = root.glob("*.zarr")
    assert_same_store(store, reference)
