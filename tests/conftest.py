"""Shared test setup: fixed threads and seeds, the `gpu` marker that skips cleanly, a tuning
cache of the session's own, and the `no_gpu_synchronisation`, `make_unwritable`,
`unwritable_folder` and `small_disk` fixtures.

Without a CUDA device the Triton interpreter is switched on (TRITON_INTERPRET=1). Apart from
that availability probe no torch.cuda call happens at import; GPU tests are skipped at
collection when no CUDA device is present.
"""

import contextlib
import os
import subprocess

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
    from attngan.autotune import CACHE_VARIABLE  # not at import: it imports Triton (Dynamo)

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


@pytest.fixture
def make_unwritable():
    """A function that makes an existing folder one in which nothing can be created or removed
    until the test ends: by its mode for a user, and for root (whom modes do not stop) by the
    immutable attribute (chattr +i, which ext4 and most local file systems have)."""
    changed = []

    def make(folder):
        if os.geteuid() != 0:
            folder.chmod(0o555)
            changed.append(lambda: folder.chmod(0o755))
        elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
            changed.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
        else:
            pytest.skip(
                f"cannot make {folder} unwritable for root here (chattr +i failed: the "
                "file system has no immutable attribute)"
            )
        return folder

    yield make
    for undo in reversed(changed):
        undo()


@pytest.fixture
def unwritable_folder(tmp_path, make_unwritable):
    """An empty folder in which nothing can be created (`make_unwritable`)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    return make_unwritable(folder)


@pytest.fixture
def small_disk(tmp_path):
    """A function giving a folder on a file system of the size asked (a tmpfs: only root may
    mount one; elsewhere the test is skipped, saying so)."""
    mounted = []

    def mount(size: int):
        folder = tmp_path / f"small_disk{len(mounted)}"
        folder.mkdir()
        if (
            os.geteuid() != 0
            or subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                capture_output=True,
            ).returncode
            != 0
        ):
            pytest.skip(
                "mounting a small file system needs root (tests/test_faults.py "
                "simulates a full disk everywhere)"
            )
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)
