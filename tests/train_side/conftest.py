import pytest
import torch

from tests.train_side.tiny_store import write_tiny_store


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """The tensors here are tiny: a second thread only adds synchronisation, which stalls badly when
    the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """The path of tiny_store.py's store (its defaults), written once and shared: only ever read it."""
    return write_tiny_store(tmp_path_factory.mktemp("tiny-store") / "tiny.zarr")
