import json

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from featurestore import FeatureStore, StoreError
from tests.featurestore import synth
from tests.featurestore.synth import RecordingStore


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("r") / "s.zarr"
    tokens = synth.token_table()
    synth.write_store(path, tokens)
    return path


def test_reading_some_layers_never_touches_the_others(store_path):
    recorder = RecordingStore(LocalStore(store_path, read_only=True))
    store = FeatureStore(zarr.open_group(recorder, mode="r"), str(store_path))
    store.example(3, layers=[1])
    store.examples(range(10, 20), layers=[1])
    store.tokens(0, store.n_tokens, layers=[1])
    touched = {k.split("/")[1] for k in recorder.keys if k.startswith("layers/")}
    assert touched == {"1"}
    assert any(k.startswith("layers/1/codes/c/") for k in recorder.keys)


def test_unknown_layers_are_a_clear_error(store_path):
    with pytest.raises(KeyError, match=r"layers \[7\] are not in this store"):
        FeatureStore.open(store_path).example(0, layers=[7])


def test_incomplete_and_wrong_version_stores_are_refused(tmp_path, store_path):
    import shutil

    for name, change in [("incomplete", {"complete": False}), ("future", {"format_version": 2})]:
        path = tmp_path / f"{name}.zarr"
        shutil.copytree(store_path, path)
        meta = json.loads((path / "zarr.json").read_text())
        meta["attributes"].update(change)
        (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="incomplete.*extract --resume"):
        FeatureStore.open(tmp_path / "incomplete.zarr")
    assert FeatureStore.open(tmp_path / "incomplete.zarr", allow_incomplete=True).n_examples > 0
    with pytest.raises(StoreError, match="format version 2.*reads version 1"):
        FeatureStore.open(tmp_path / "future.zarr")
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore.open(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore.open(tmp_path / "plain.zarr")


def test_lossy_store_reads_within_the_codec_bound(store_path):
    tokens = synth.token_table()
    data = synth.states(tokens)
    got = FeatureStore.open(store_path).tokens(0, tokens.n_tokens).hidden
    for k, x in data.items():
        err = np.linalg.norm(got[k] - x, axis=1) / np.linalg.norm(x, axis=1)
        assert err.max() <= 0.069 / np.sqrt(12) * 1.05


def test_padded_examples_decode_into_place_or_stay_encoded(store_path):
    store = FeatureStore.open(store_path)
    indices = [12, 3, 4, 40]  # out of order, one far away: several spans
    batch, raw = store.padded(indices, layers=[1, 3]), store.padded(indices, layers=[3], decode=False)
    T = int(store.lengths[indices].max())
    assert batch.input_ids.shape == (4, T) and batch.hidden[1].shape == (4, T, store.hidden_size)
    assert set(raw.hidden[3]) == set(store.codec.parts()) and raw.hidden[3]["codes"].dtype == np.int8
    for row, i in enumerate(indices):
        example, n = store.example(i, layers=[1, 3]), store.lengths[i]
        assert np.array_equal(batch.input_ids[row, :n], example.input_ids)
        assert np.array_equal(batch.hidden[1][row, :n], example.hidden[1])
        encoded = {name: part[row, :n] for name, part in raw.hidden[3].items()}
        assert np.array_equal(store.codec.decode(encoded), example.hidden[3])
        assert not batch.hidden[1][row, n:].any() and not raw.hidden[3]["codes"][row, n:].any()
