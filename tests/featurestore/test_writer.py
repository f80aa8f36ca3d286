import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featurestore import (
    BackgroundWriter,
    CodecError,
    FeatureStore,
    StoreError,
    StoreWriter,
    finalize,
    verify,
)
from tests import helpers
from tests.featurestore import synth
from tests.featurestore.synth import arrays

REPO = Path(__file__).resolve().parents[2]


def test_ragged_layout_round_trips_examples_and_meta(tmp_path):
    tokens = synth.token_table()
    data = synth.write_store(tmp_path / "s.zarr", tokens, codec="fp32")
    store = FeatureStore.open(tmp_path / "s.zarr")
    assert store.n_examples == tokens.n_examples and store.n_tokens == tokens.n_tokens
    assert np.array_equal(store.offsets, tokens.offsets)
    for i in (0, 17, tokens.n_examples - 1):
        a, b = tokens.offsets[i], tokens.offsets[i + 1]
        ex = store.example(i)
        assert np.array_equal(ex.input_ids, tokens.input_ids[a:b])
        assert np.array_equal(ex.loss_mask, tokens.loss_mask[a:b])
        for k in synth.LAYERS:
            assert np.array_equal(ex.hidden[k], data[k][a:b])
        assert store.meta[i] == {"id": i, "final": str(i * 7)}
    batch = store.examples([5, 6, 7, 2], layers=[3])
    expected = np.concatenate([data[3][tokens.offsets[i] : tokens.offsets[i + 1]] for i in (5, 6, 7, 2)])
    assert np.array_equal(batch.hidden[3], expected)
    assert batch.offsets.tolist() == np.concatenate([[0], np.cumsum(np.diff(tokens.offsets)[[5, 6, 7, 2]])]).tolist()
    far = [tokens.n_examples - 1, 0, 1]  # far apart: read run by run, not the whole span
    expected = np.concatenate([data[0][tokens.offsets[i] : tokens.offsets[i + 1]] for i in far])
    assert np.array_equal(store.examples(far, layers=[0]).hidden[0], expected)
    weights, _ = store.head()
    assert np.array_equal(weights["lm_head.weight"], synth.head()["lm_head.weight"])


def test_stats_and_geometry(tmp_path):
    tokens = synth.token_table()
    data = synth.write_store(tmp_path / "s.zarr", tokens, codec="fp16")
    store = FeatureStore.open(tmp_path / "s.zarr")
    assert store.geometry.n_shards > 5  # the tests really exercise many shards
    stats = store.attrs["stats"]["layers"]
    for k in synth.LAYERS:
        assert stats[str(k)]["absmax"] == pytest.approx(float(np.abs(data[k]).max()))
        assert stats[str(k)]["rms"] == pytest.approx(float(np.sqrt((data[k].astype(np.float64) ** 2).mean())), rel=1e-6)


def test_batch_size_does_not_change_the_store(tmp_path):
    tokens = synth.token_table()
    synth.write_store(tmp_path / "a.zarr", tokens, batch=1000)
    synth.write_store(tmp_path / "b.zarr", tokens, batch=13)
    assert _same_arrays(tmp_path / "a.zarr", tmp_path / "b.zarr")


def _same_arrays(a, b) -> bool:
    x, y = arrays(a), arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


CHILD = """
import sys
from tests.featurestore import synth
from featurestore import StoreWriter
tokens = synth.token_table(n_examples=400)
data = synth.states(tokens)
with StoreWriter(sys.argv[1], synth.spec(), tokens, meta=[{"id": i, "final": str(i * 7)} for i in range(400)],
                 head=synth.head(), chunk_mb=0.004, resume=len(sys.argv) > 2) as w:
    for start in range(0, tokens.n_tokens, 50):
        w.write(start, {k: v[start:start + 50] for k, v in data.items()})
        print(start, flush=True)
"""


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_store(tmp_path):
    path = tmp_path / "killed.zarr"
    child = helpers.start([sys.executable, "-c", CHILD, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    manifests = path / "manifest"

    def several_shards_written():  # kill it mid-way, several shards in
        if len(list(manifests.glob("shard-*/zarr.json"))) >= 4:
            return True
        assert child.poll() is None, "the writer finished before it could be killed"
        return False

    helpers.wait_until(several_shards_written, 120, "the child writer's 4th shard", interval=0.005)
    child.send_signal(signal.SIGKILL)
    helpers.finish(child, 30, "the killed writer")
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore.open(path)
    refused = helpers.run([sys.executable, "-c", CHILD, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert refused.returncode != 0 and "holds an interrupted write" in refused.stderr  # never silently redone
    finished = [json.loads(p.read_text())["attributes"]["checksums"] for p in manifests.glob("shard-*/zarr.json")]
    before = {key: (path / key).stat().st_mtime_ns for sums in finished for key in sums}
    helpers.run([sys.executable, "-c", CHILD, str(path), "resume"], cwd=REPO, check=True, capture_output=True,
                timeout=120)

    tokens = synth.token_table(n_examples=400)
    synth.write_store(tmp_path / "clean.zarr", tokens, batch=50)
    assert _same_arrays(path, tmp_path / "clean.zarr")
    assert FeatureStore.open(path).fingerprint == FeatureStore.open(tmp_path / "clean.zarr").fingerprint
    assert verify(path) == []
    assert before and all((path / k).stat().st_mtime_ns == t for k, t in before.items())  # never rewritten


def test_writer_refuses_to_overwrite(tmp_path):
    tokens = synth.token_table()
    synth.write_store(tmp_path / "s.zarr", tokens)
    with pytest.raises(StoreError, match="already holds this complete store"):
        synth.write_store(tmp_path / "s.zarr", tokens)
    with pytest.raises(StoreError, match="different store"):
        synth.write_store(tmp_path / "s.zarr", synth.token_table(seed=1))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.txt").write_text("precious")
    with pytest.raises(StoreError, match="not a feature store"):
        synth.write_store(tmp_path / "docs", tokens)
    assert (tmp_path / "docs" / "thesis.txt").read_text() == "precious"


def test_fp16_overflow_names_the_layer_and_suggests_bf16(tmp_path):
    tokens = synth.token_table()
    x = np.zeros((tokens.n_tokens, synth.HIDDEN), np.float32)
    x[100, 3] = 70000.0  # Gemma 3 has such values
    rows = {0: x, 1: x * 0, 3: x * 0}
    with pytest.raises(CodecError, match=r"layer 0: values reach 70000.*use --codec bf16"):
        with StoreWriter(tmp_path / "s.zarr", synth.spec("fp16"), tokens) as w:
            w.write(0, rows)
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore.open(tmp_path / "s.zarr")


def test_non_finite_values_are_refused(tmp_path):
    tokens = synth.token_table()
    data = synth.states(tokens)
    data[1][7, 2] = np.nan
    with pytest.raises(CodecError, match="layer 1: hidden states contain inf or nan"):
        with StoreWriter(tmp_path / "s.zarr", synth.spec(), tokens) as w:
            w.write(0, data)


def test_gaps_and_wrong_shapes_are_errors(tmp_path):
    tokens = synth.token_table()
    data = synth.states(tokens)
    with StoreWriter(tmp_path / "s.zarr", synth.spec(), tokens, chunk_mb=0.004) as w:
        with pytest.raises(ValueError, match="never written"):
            w.write(10, {k: v[10:20] for k, v in data.items()})
        with pytest.raises(ValueError, match="expected layers"):
            w.write(0, {0: data[0][:5]})
        with pytest.raises(ValueError, match="expected shape"):
            w.write(0, {k: v[:5, :7] for k, v in data.items()})
        w.write(0, data)
        w.write(0, {k: v[:100] for k, v in data.items()})  # already written: dropped, not an error
    assert verify(tmp_path / "s.zarr") == []


def test_closing_early_leaves_an_incomplete_store(tmp_path):
    tokens = synth.token_table()
    data = synth.states(tokens)
    with pytest.raises(StoreError, match="closed before token"):
        with StoreWriter(tmp_path / "s.zarr", synth.spec(), tokens) as w:
            w.write(0, {k: v[:100] for k, v in data.items()})
    assert not FeatureStore.open(tmp_path / "s.zarr", allow_incomplete=True).complete


def test_disjoint_shard_writers_then_finalize_equal_one_writer(tmp_path):
    """The distributed case: each writer owns some shards and drops other rows."""
    tokens = synth.token_table()
    data = synth.states(tokens)
    path = tmp_path / "dist.zarr"
    kw = dict(meta=[{"id": i, "final": str(i * 7)} for i in range(tokens.n_examples)], head=synth.head(), chunk_mb=0.004)
    first = StoreWriter(path, synth.spec(), tokens, **kw, shards=[])  # creates the layout only
    n = first.geometry.n_shards
    for rank in range(2):
        w = StoreWriter(path, synth.spec(), tokens, **kw, resume=True, shards=range(rank, n, 2))
        lo, hi = w.geometry.shard_range(rank)
        assert w.needs(lo, hi) and not w.needs(*w.geometry.shard_range(1 - rank)) and w.needs(hi - 1, hi + 1)
        w.write(0, data)
        w.close()
    assert not FeatureStore.open(path, allow_incomplete=True).complete
    finalize(path)
    synth.write_store(tmp_path / "one.zarr", tokens)
    assert _same_arrays(path, tmp_path / "one.zarr")


def test_background_writer_overlaps_and_reraises(tmp_path):
    tokens = synth.token_table()
    data = synth.states(tokens)
    with StoreWriter(tmp_path / "s.zarr", synth.spec(), tokens, chunk_mb=0.004) as w, BackgroundWriter(w) as bg:
        for start in range(0, tokens.n_tokens, 64):
            bg.write(start, {k: v[start : start + 64] for k, v in data.items()})
    assert FeatureStore.open(tmp_path / "s.zarr").complete
    with pytest.raises(ValueError, match="never written"):
        with StoreWriter(tmp_path / "t.zarr", synth.spec(), tokens) as w, BackgroundWriter(w) as bg:
            bg.write(5, {k: v[5:9] for k, v in data.items()})
            bg.join()


def test_empty_token_table_is_refused(tmp_path):
    from featurestore import TokenTable

    with pytest.raises(StoreError, match="no tokens"):
        StoreWriter(tmp_path / "s.zarr", synth.spec(), TokenTable.from_examples([], []))


def test_attach_joins_a_created_store_and_never_creates_one(tmp_path):
    """Distributed extraction: rank 0 creates, the others attach (no resume needed) with a share
    of shards computed from the store's own geometry."""
    tokens, path = synth.token_table(), tmp_path / "s.zarr"
    kw = dict(meta=[{"id": i, "final": str(i * 7)} for i in range(tokens.n_examples)], head=synth.head(), chunk_mb=0.004)
    with pytest.raises(StoreError, match="nothing to attach to"):
        StoreWriter(path, synth.spec(), tokens, attach=True, **kw)
    first = StoreWriter(path, synth.spec(), tokens, shards=lambda g: range(g.n_shards // 2), **kw)
    second = StoreWriter(path, synth.spec(), tokens, attach=True, shards=lambda g: range(g.n_shards // 2, g.n_shards))
    n = first.geometry.n_shards
    for writer, (mine, other) in ((first, (0, n - 1)), (second, (n - 1, 0))):
        assert writer.needs(*writer.geometry.shard_range(mine)) and not writer.needs(*writer.geometry.shard_range(other))
        writer.write(0, synth.states(tokens))
        writer.close()
    finalize(path)
    synth.write_store(tmp_path / "one.zarr", tokens)
    assert _same_arrays(path, tmp_path / "one.zarr")


def test_background_writer_pool_and_encoded_rows_give_the_same_store(tmp_path):
    """threads=3 encodes batches on a pool; write_encoded takes rows encoded elsewhere (a GPU) and
    calls ``ready`` first: both give the one-thread store, stats included."""
    tokens = synth.token_table()
    data = synth.states(tokens)
    synth.write_store(tmp_path / "one.zarr", tokens)
    meta = [{"id": i, "final": str(i * 7)} for i in range(tokens.n_examples)]
    ready = []
    for name, threads in (("pool.zarr", 3), ("encoded.zarr", 1)):
        with StoreWriter(tmp_path / name, synth.spec(), tokens, meta=meta, head=synth.head(), chunk_mb=0.004) as w, \
                BackgroundWriter(w, threads=threads) as bg:
            for start in range(0, tokens.n_tokens, 97):
                rows = {k: v[start : start + 97] for k, v in data.items()}
                if threads > 1:
                    bg.write(start, rows)
                else:
                    bg.write_encoded(start, w.encode(rows), ready=lambda: ready.append(1))
        assert _same_arrays(tmp_path / "one.zarr", tmp_path / name)
        one, other = FeatureStore.open(tmp_path / "one.zarr"), FeatureStore.open(tmp_path / name)
        assert one.attrs["stats"]["layers"] == other.attrs["stats"]["layers"]
    assert len(ready) == len(range(0, tokens.n_tokens, 97))
