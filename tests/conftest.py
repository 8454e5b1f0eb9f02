"""Shared test setup: fixed threads and seeds, the `gpu` marker that skips cleanly, a tuning
cache of the session's own, and the `no_gpu_synchronisation` fixture.

Without a CUDA device the Triton interpreter is switched on (TRITON_INTERPRET=1). Apart from
that availability probe no torch.cuda call happens at import; GPU tests are skipped at
collection when no CUDA device is present.
"""
import contextlib
import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when kernels are decorated, so it is set before any test module
# imports attngan.kernels: without a CUDA device the Triton kernels run in the CPU interpreter.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run bench/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_tuning_cache(tmp_path_factory):
    """Auto's measurements (on a GPU) go to a file of this session, not to the user's cache."""
    from attngan.autotune import CACHE_VARIABLE   # not at import: it imports Triton (Dynamo)
    os.environ[CACHE_VARIABLE] = str(tmp_path_factory.mktemp("tuning") / "autotune.json")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def no_gpu_synchronisation():
    """A context manager inside which any synchronisation with the GPU raises (torch's sync
    debug mode): work queued before it is waited for first, outside."""
    @contextlib.contextmanager
    def forbid():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return forbid
