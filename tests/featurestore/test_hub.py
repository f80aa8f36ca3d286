"""Stores on the Hugging Face Hub, against a stand-in for huggingface_hub's client (no network)."""

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from featurestore import FeatureStore, hub, inventory
from featurestore.cli import main
from featurestore.errors import StoreError
from featurestore.hub import HubError, parse_hf_url, push_store
from featurestore.storage import open_store, root_attrs
from featurestore.verify import verify
from tests.featurestore import synth
from tests.hub_fake import FakeHfFileSystem, FakeHub, HubDown

URL = "hf://datasets/team/synth"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "s.zarr"
    synth.write_store(path, synth.token_table())
    return path


@pytest.fixture
def fake_hf(tmp_path, monkeypatch):
    """hf:// served from the fake hub's files, read through a fresh read cache."""
    monkeypatch.setattr(FakeHfFileSystem, "root", str(tmp_path / "hub"))
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, "hf", FakeHfFileSystem)  # fsspec.registry is a view
    monkeypatch.setenv("LADDER_REMOTE_CACHE", str(tmp_path / "read-cache"))
    return FakeHub(tmp_path / "hub")


def expected_files(store) -> set[str]:
    s = open_store(store)
    attrs = root_attrs(s)
    return set(inventory.objects(attrs, inventory.sections(s, attrs)))


@pytest.mark.filterwarnings("ignore:Object at:UserWarning")  # listing the copy meets README.md, as on the Hub
def test_push_commits_every_object_and_marks_the_store_complete_last(store, fake_hf, monkeypatch):
    monkeypatch.setattr(hub, "MAX_FILES", 40)  # several object commits
    pushed = push_store(store, URL, api=fake_hf)
    commits = fake_hf.commits
    assert fake_hf.calls[0] == ("create_repo", "team/synth", "dataset", None, True)
    assert commits[0]["paths"] == ["zarr.json"] and commits[0]["root_complete"] is False
    assert [c["root_complete"] for c in commits] == [False] * (len(commits) - 1) + [True]
    assert all("zarr.json" not in c["paths"] for c in commits[1:-1]) and len(commits) == pushed.commits > 3
    manifests = {p for p in expected_files(store) if p.startswith("manifest/") and p != "manifest/zarr.json"}
    assert manifests <= set(commits[-1]["paths"]) and "README.md" in commits[-1]["paths"]
    assert all(not set(c["paths"]) & manifests for c in commits[:-1])  # a shard is vouched for only at the end
    files = set(fake_hf.repos[("dataset", "team/synth")]) - {".gitattributes", "README.md"}
    assert files == expected_files(store)
    copy = fake_hf.materialize("dataset", "team/synth")
    assert verify(copy) == [] and synth.arrays(copy).keys() == synth.arrays(store).keys()
    assert all(np.array_equal(a, synth.arrays(copy)[k]) for k, a in synth.arrays(store).items())


def test_the_dataset_card_names_what_computed_the_store(store, fake_hf):
    push_store(store, URL, api=fake_hf)
    card = fake_hf.repos[("dataset", "team/synth")]["README.md"].decode()
    fingerprint = FeatureStore.open(store).fingerprint
    assert fingerprint in card and "synthetic" in card and f"train_side train {URL}" in card


def test_an_interrupted_push_leaves_an_incomplete_store_and_resumes(store, fake_hf, monkeypatch):
    monkeypatch.setattr(hub, "MAX_FILES", 40)
    fake_hf.fail_at_commit = 2
    with pytest.raises(HubDown):
        push_store(store, URL, api=fake_hf)
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore.open(URL)
    push_store(store, URL, api=fake_hf)
    assert FeatureStore.open(URL).complete
    again = push_store(store, URL, api=fake_hf)
    assert again.already and again.commits == 0


def test_reading_a_store_from_hf_urls(store, fake_hf):
    push_store(store, URL, api=fake_hf)
    local, remote = FeatureStore.open(store), FeatureStore.open(URL)
    assert remote.fingerprint == local.fingerprint
    a, b = local.example(5, layers=[0, 3]), remote.example(5, layers=[0, 3])
    assert np.array_equal(a.input_ids, b.input_ids) and all(np.array_equal(a.hidden[k], b.hidden[k]) for k in a.hidden)
    assert verify(URL) == []


def test_refusals(store, fake_hf, tmp_path):
    with pytest.raises(HubError, match="a feature store goes to a dataset repository: hf://datasets/ORG/NAME"):
        push_store(store, "hf://team/synth", api=fake_hf)
    with pytest.raises(HubError, match="not a Hub repository URL"):
        parse_hf_url("hf://just-a-name", "dataset")
    other = tmp_path / "other.zarr"
    synth.write_store(other, synth.token_table(n_examples=10, seed=3), codec="fp16")
    push_store(other, URL, api=fake_hf)
    with pytest.raises(HubError, match="holds another store"):
        push_store(store, URL, api=fake_hf)


def test_a_corrupt_object_is_named_and_nothing_is_marked_complete(store, fake_hf, tmp_path):
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    chunk = next(p for p in sorted(bad.glob("layers/3/**/c/*/*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(HubError, match=f"{chunk.relative_to(bad)} of .*: checksum mismatch; nothing more pushed"):
        push_store(bad, URL, api=fake_hf)
    assert json.loads(fake_hf.repos[("dataset", "team/synth")]["zarr.json"])["attributes"]["complete"] is False


def test_cli_push_to_the_hub(store, fake_hf, monkeypatch):
    monkeypatch.setattr(hub, "hub_api", lambda: fake_hf)
    result = CliRunner().invoke(main, ["push", str(store), URL])
    assert result.exit_code == 0 and f"pushed to {URL} in" in result.output, result.output
    assert CliRunner().invoke(main, ["push", str(store), URL]).stdout.strip() == f"{URL} already holds this complete store"
    wrong = CliRunner().invoke(main, ["push", str(store), "hf://team/synth"])
    assert wrong.exit_code == 1 and wrong.output.count("\n") == 1
    info = CliRunner().invoke(main, ["info", URL])
    assert info.exit_code == 0 and FeatureStore.open(store).fingerprint in info.output
