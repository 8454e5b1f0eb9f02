"""Shared test setup: fixed threads and seeds, and the `gpu` marker that skips cleanly.

No torch.cuda call happens at import; GPU tests are skipped at collection when no CUDA device
is present.
"""
import pytest
import torch

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run bench/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
