"""Fixtures shared by the engine tests."""
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: small models gain nothing from more, and on a shared 2-core box OpenMP
    spin-waiting against other processes multiplies wall time."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
