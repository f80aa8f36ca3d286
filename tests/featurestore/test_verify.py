from featurestore import verify
from tests.featurestore import synth


def test_verify_passes_a_clean_store_and_names_the_shard_of_a_flipped_byte(tmp_path):
    path = tmp_path / "s.zarr"
    synth.write_store(path, synth.token_table())
    assert verify(path) == []
    victim = path / "layers" / "3" / "codes" / "c" / "2" / "0"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    problems = verify(path)
    assert [(p.where.split(" (")[0], p.key, p.what) for p in problems] == [
        ("shard 2", "layers/3/codes/c/2/0", "checksum mismatch")
    ]


def test_verify_reports_missing_objects_and_layout_damage(tmp_path):
    path = tmp_path / "s.zarr"
    synth.write_store(path, synth.token_table())
    (path / "layers" / "0" / "scale" / "c" / "1").unlink()
    victim = path / "tokens" / "input_ids" / "c" / "0"
    victim.write_bytes(victim.read_bytes()[:-1])
    problems = {(p.where.split(" (")[0], p.what) for p in verify(path)}
    assert problems == {("shard 1", "missing object"), ("layout", "checksum mismatch")}
