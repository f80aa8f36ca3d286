"""Reading stores over HTTP (a local server on 127.0.0.1) through the read cache."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from featurestore import FeatureStore, StoreError, inventory
from featurestore.cli import main
from featurestore.storage import root_attrs
from tests.featurestore import synth


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    synth.write_store(root / "a.zarr", synth.token_table())
    synth.write_store(root / "b.zarr", synth.token_table(seed=3), codec="fp16")
    return root


def same_content(a: FeatureStore, b: FeatureStore) -> None:
    assert a.attrs == b.attrs
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.meta == b.meta
    (wa, ca), (wb, cb) = a.head(), b.head()
    assert ca == cb and wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    ta, tb = a.tokens(0, a.n_tokens), b.tokens(0, b.n_tokens)
    np.testing.assert_array_equal(ta.input_ids, tb.input_ids)
    np.testing.assert_array_equal(ta.loss_mask, tb.loss_mask)
    assert all(np.array_equal(ta.hidden[k], tb.hidden[k]) for k in a.layers)
    some = np.random.default_rng(0).permutation(a.n_examples)[:9]
    assert np.array_equal(a.examples(some, [1]).hidden[1], b.examples(some, [1]).hidden[1])


def test_the_inventory_names_exactly_the_files_of_a_store(root):
    """Everything that needs a store's objects finds them from its metadata, never by listing."""
    from featurestore.storage import open_store

    for name in ("a.zarr", "b.zarr"):
        store = open_store(root / name)
        attrs = root_attrs(store)
        on_disk = {str(p.relative_to(root / name)) for p in (root / name).rglob("*") if p.is_file()}
        assert set(inventory.objects(attrs, inventory.sections(store, attrs))) == on_disk


def test_a_store_over_http_reads_exactly_like_the_local_one(root, http_server):
    server = http_server(root)
    for name in ("a.zarr", "b.zarr"):
        same_content(FeatureStore.open(f"{server.url}/{name}"), FeatureStore.open(root / name))
    assert all(method == "GET" for method, _ in server.requests)  # no listing, no HEAD


def test_the_read_cache_serves_later_reads_even_with_the_server_gone(root, http_server, tmp_path):
    server = http_server(root)
    url = f"{server.url}/a.zarr"
    same_content(FeatureStore.open(url), FeatureStore.open(root / "a.zarr"))
    [cached] = (tmp_path / "read-cache").iterdir()
    assert cached.name.startswith("a.zarr-") and (cached / "layers" / "3" / "codes" / "c" / "0" / "0").is_file()
    server.requests.clear()
    same_content(FeatureStore.open(url), FeatureStore.open(root / "a.zarr"))
    assert server.requests == [("GET", "/a.zarr/zarr.json")]  # only the root is asked for again
    server.stop()
    same_content(FeatureStore.open(url), FeatureStore.open(root / "a.zarr"))
    with pytest.raises(StoreError, match=r"cannot read .*b.zarr: Cannot connect"):
        FeatureStore.open(f"{server.url}/b.zarr")  # never cached


def test_an_incomplete_remote_store_is_read_but_never_cached(root, http_server, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(root / "a.zarr", served / "a.zarr")
    meta = json.loads((served / "a.zarr" / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (served / "a.zarr" / "zarr.json").write_text(json.dumps(meta))
    url = f"{http_server(served).url}/a.zarr"
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore.open(url)
    store = FeatureStore.open(url, allow_incomplete=True)
    assert store.tokens(0, 50).hidden.keys() == {0, 1, 3}
    assert not (tmp_path / "read-cache").exists()


def test_info_verify_and_ls_over_http(root, http_server, tmp_path):
    server = http_server(root)
    run = lambda *args: CliRunner().invoke(main, list(args))
    local, remote = run("info", str(root / "a.zarr")), run("info", f"{server.url}/a.zarr")
    assert remote.exit_code == 0, remote.output
    assert remote.output.replace(f"{server.url}/a.zarr", str(root / "a.zarr")) == local.output  # sizes included
    assert "ok: every checksum matches" in run("verify", f"{server.url}/b.zarr").output
    listing = run("ls", f"{server.url}/")
    assert [line.split()[0] for line in listing.output.splitlines()[1:]] == ["a.zarr", "b.zarr"]

    bad = tmp_path / "bad"
    shutil.copytree(root / "a.zarr", bad / "a.zarr")
    victim = bad / "a.zarr" / "layers" / "1" / "scale" / "c" / "4"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    result = run("verify", "--cache-dir", "off", f"{http_server(bad).url}/a.zarr")
    assert result.exit_code == 1 and "layers/1/scale/c/4: checksum mismatch" in result.output
