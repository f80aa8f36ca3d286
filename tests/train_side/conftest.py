import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """The tensors here are tiny: a second thread only adds synchronisation, which stalls badly when
    the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
