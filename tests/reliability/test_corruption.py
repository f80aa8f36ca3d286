"""Flipped, truncated and deleted objects of every kind: the read path refuses them with a
CorruptStoreError naming the object (never decodes them into numbers), and `verify` reports them."""

import shutil

import pytest

from featurestore import CorruptStoreError, StoreError, verify
from featurestore.integrity import INTEGRITY
from tests.featurestore import synth
from tests.reliability.faults import delete, edit_json, flip, read_everything, same, truncate

# object kind -> its path in a synth store (chunk keys of shard 1 where the kind is per shard)
OBJECTS = {
    "layer chunk (sharded)": "layers/1/codes/c/1/0",
    "layer part (unsharded)": "layers/3/scale/c/1",
    "input ids": "tokens/input_ids/c/1",
    "loss mask": "tokens/loss_mask/c/1",
    "offsets": "examples/offsets/c/0",
    "meta": "examples/meta/c/0",
    "head weight": "head/lm_head.weight/c/0/0",
}
DAMAGE = {"flipped": flip, "truncated": truncate, "deleted": delete}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("pristine") / "s.zarr"
    synth.write_store(path, synth.token_table(n_examples=40))
    return path


@pytest.fixture
def store(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "s.zarr")
    return tmp_path / "s.zarr"


def test_the_synth_store_has_every_object_kind(pristine):
    for key in OBJECTS.values():
        assert (pristine / key).is_file(), key
    assert INTEGRITY in read_everything.__globals__["FeatureStore"].open(pristine).attrs


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("kind", OBJECTS)
def test_a_damaged_object_is_refused_on_read_and_by_verify(store, kind, damage):
    DAMAGE[damage](store / OBJECTS[kind])
    with pytest.raises(CorruptStoreError, match=OBJECTS[kind].split("/c/")[0]):
        read_everything(store)
    assert any(p.key == OBJECTS[kind] for p in verify(store))


@pytest.mark.parametrize("document, change", [
    ("zarr.json", lambda n: n["attributes"].update(n_tokens=n["attributes"]["n_tokens"] + 100)),
    ("zarr.json", lambda n: n["attributes"].update(layers=[0, 1])),
    ("layers/1/codes/zarr.json", lambda n: n.update(shape=[n["shape"][0] + 100, n["shape"][1]])),
    ("examples/offsets/zarr.json", lambda n: n.update(fill_value=7)),
    ("head/zarr.json", lambda n: n["attributes"].update(logit_softcap=30.0)),
    ("manifest/layout/zarr.json", lambda n: n["attributes"]["checksums"].clear()),
])
def test_edited_metadata_is_refused_on_read_and_by_verify(store, document, change):
    edit_json(store / document, change)
    with pytest.raises(CorruptStoreError, match="changed since the store was completed"):
        read_everything(store)
    assert verify(store)


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_shard_manifest_is_refused_on_open_and_by_verify(store, damage):
    DAMAGE[damage](store / "manifest/shard-000001/zarr.json")
    assert any("shard 1" in p.where or "shard-000001" in p.key for p in verify(store))
    with pytest.raises(CorruptStoreError, match="manifest/shard-000001/zarr.json"):
        read_everything(store)  # what vouches for shard 1's data is checked when the store opens


def test_a_flipped_byte_in_the_root_is_refused(store):
    text = (store / "zarr.json").read_text()
    (store / "zarr.json").write_text(text.replace('"n_examples": 40', '"n_examples": 41'))
    with pytest.raises(StoreError):
        read_everything(store)


def test_offsets_that_disagree_with_the_token_count_are_refused_even_without_digests(store):
    """A store without the integrity record (as written before it) still has its offsets checked."""
    import numpy as np
    import zarr

    edit_json(store / "zarr.json", lambda n: n["attributes"].pop(INTEGRITY))
    zarr.open_array(store / "examples/offsets", mode="r+")[5] = 10**15
    with pytest.raises(CorruptStoreError, match="examples/offsets"):
        read_everything(store)
    assert any(p.key == "examples/offsets" for p in verify(store))
    assert np  # noqa


def test_older_stores_without_frame_checksums_are_checked_by_their_manifests(tmp_path, monkeypatch):
    """Stores written before frame checksums and the integrity record still read, each chunk checked
    against its manifest's sha256: a flipped byte in one is refused all the same."""
    from zarr.codecs import ZstdCodec

    from featurestore import writer

    monkeypatch.setattr(writer, "ZstdCodec", lambda level, checksum: ZstdCodec(level=level))
    path = tmp_path / "old.zarr"
    synth.write_store(path, synth.token_table(n_examples=40))
    edit_json(path / "zarr.json", lambda n: n["attributes"].pop(INTEGRITY))
    good = read_everything(path)
    assert '"checksum": false' in (path / "layers/1/codes/zarr.json").read_text()
    for key in ("layers/1/codes/c/1/0", "head/lm_head.weight/c/0/0", "examples/offsets/c/0"):
        copy = tmp_path / f"{key.replace('/', '_')}.zarr"
        shutil.copytree(path, copy)
        flip(copy / key, at=0.3)
        with pytest.raises(CorruptStoreError, match="sha256"):
            read_everything(copy)
    assert same(read_everything(path), good)


def test_verify_names_a_root_that_fails_its_digest_without_telling_you_to_run_verify(store):
    from click.testing import CliRunner

    from featurestore.cli import main

    edit_json(store / "zarr.json", lambda n: n["attributes"].update(n_tokens=n["attributes"]["n_tokens"] + 100))
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 1 and "BAD  zarr.json: changed since the store was completed" in result.output
    assert "run `featurestore verify" not in result.output and "extract or pull it again" in result.output
