import os

import pytest
import torch

# Keep the suite reproducible and light on this 2-core machine: under pytest-xdist every worker gets one
# thread (two workers x two threads would oversubscribe the cores and stall OpenMP), otherwise up to two.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One thread for a test of tiny tensors: they gain nothing from threads, and on a shared, oversubscribed CPU
    two spinning OpenMP threads made such tests ~30x slower. Use it as ``pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fmnist_dir():
    if not os.path.exists(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip("Debian package dataset-fashion-mnist is not installed (make data)")
    return FMNIST_DIR
