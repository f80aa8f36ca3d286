import numpy as np
import pytest

from featurestore import Geometry, TokenTable


def test_geometry_sizes_chunks_by_bytes_and_covers_every_token():
    g = Geometry.plan(n_tokens=100_000, row_bytes=576)  # int8 codes of a d=576 model
    assert g.chunk_tokens == 4096 and g.shard_tokens == 8192  # ~2.4 MB chunks, ~5 MB shards
    assert Geometry.plan(100_000, row_bytes=4096 * 2).chunk_tokens == 512  # fp16 rows of a 7B model
    ranges = [g.shard_range(j) for j in range(g.n_shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == 100_000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert g.shard_of(8191) == 0 and g.shard_of(8192) == 1


def test_token_table_is_ragged_and_validated():
    t = TokenTable.from_examples([[1, 2, 3], [4]], [[0, 1, 1], [1]])
    assert t.offsets.tolist() == [0, 3, 4] and t.input_ids.dtype == np.int32
    with pytest.raises(ValueError, match="loss mask"):
        TokenTable.from_examples([[1, 2]], [[1]])
    with pytest.raises(ValueError, match="at least one token"):
        TokenTable.from_examples([[]], [[]])


def test_a_producers_source_cannot_overwrite_the_writers_attributes():
    from featurestore import StoreSpec

    with pytest.raises(ValueError, match=r"\['complete', 'fingerprint'\] are the store's own attributes"):
        StoreSpec([0], 8, "fp32", {"model": {}, "complete": True, "fingerprint": "x"})
