import pytest

from tests.train_side.tiny_store import write_tiny_store


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one thread (tests/conftest.py's one_thread)."""


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """The path of tiny_store.py's store (its defaults), written once and shared: only ever read it."""
    return write_tiny_store(tmp_path_factory.mktemp("tiny-store") / "tiny.zarr")
