"""The direct chunk-file reader must return exactly what Zarr returns, for every array of a store."""

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

from featurestore import FeatureStore, StoreWriter
from featurestore import layout as L
from featurestore.direct import layout_of
from tests.featurestore import synth


def through_zarr(path) -> FeatureStore:
    """The same store read through Zarr's own pipeline (a wrapped store is not read directly)."""
    store = FeatureStore(zarr.open_group(WrapperStore(LocalStore(path, read_only=True)), mode="r"), str(path))
    assert store._direct is None
    return store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "s.zarr"
    synth.write_store(path, synth.token_table(n_examples=80))  # small chunks: many chunks per shard, many shards
    return path


def test_every_array_and_range_reads_as_zarr_reads_it(store_path):
    direct, reference = FeatureStore.open(store_path), through_zarr(store_path)
    assert direct._direct is not None
    chunk, shard, n = direct.geometry.chunk_tokens, direct.geometry.shard_tokens, direct.n_tokens
    assert chunk < shard < n
    ranges = [(0, n), (0, 1), (n - 1, n), (chunk - 1, chunk + 1), (shard - 3, 2 * shard + 5), (5, 5 + chunk)]
    paths = direct._paths(direct.layers)
    for start, stop in ranges:
        for path, got, want in zip(paths, direct._read(paths, start, stop), reference._read(paths, start, stop)):
            assert got.dtype == want.dtype and np.array_equal(got, want), (path, start, stop)
    assert all(layout_of(direct._array(p)) is not None for p in paths)
    assert layout_of(direct._array(L.layer_path(0, "codes"))).sharded


def test_missing_shards_of_an_incomplete_store_read_as_zeros_as_in_zarr(tmp_path):
    path = tmp_path / "s.zarr"
    tokens = synth.token_table(n_examples=40)
    with StoreWriter(path, synth.spec(), tokens, head=synth.head(), chunk_mb=0.004, shards=[0]) as writer:
        writer.write(0, synth.states(tokens))  # rows of the other shards are dropped: they stay missing
    direct, reference = FeatureStore.open(path, allow_incomplete=True), through_zarr(path)
    paths = direct._paths(direct.layers)
    for got, want in zip(direct._read(paths, 0, tokens.n_tokens), reference._read(paths, 0, tokens.n_tokens)):
        assert np.array_equal(got, want)
    _, end_of_shard_0 = direct.geometry.shard_range(0)
    assert not direct.tokens(end_of_shard_0, tokens.n_tokens).hidden[0].any()


def test_a_corrupt_shard_index_is_a_clear_error(tmp_path, store_path):
    import shutil

    path = tmp_path / "s.zarr"
    shutil.copytree(store_path, path)
    shard = path / "layers" / "1" / "codes" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the trailing index
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard index of layers/1/codes/c/0/0 is corrupt"):
        FeatureStore.open(path).tokens(0, 10, layers=[1])


def test_arrays_with_other_codec_chains_are_left_to_zarr(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    plain = group.create_array("a", shape=(100, 4), chunks=(10, 4), dtype="float32", compressors=None)
    split_rows = group.create_array("b", shape=(100, 4), chunks=(10, 2), dtype="float32")
    assert layout_of(plain) is None and layout_of(split_rows) is None
