"""Several processes under torchrun (gloo on the CPU): what two ranks compute equals what one
process computes, where the math allows (docs/DESIGN.md, "Several GPUs and machines").

Processes are started the two ways a user starts them: `torchrun` for whole commands, and, for
the collectives alone, forked ranks given torchrun's environment.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from attngan.distributed import (SINGLE, World, gather, gather_to_main, gather_with_grad,
                                 join_world, leave_world, local_share)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gan_training import single_thread, train_tiny_gan  # noqa: E402,F401

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(processes: int, *argv, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m attngan ARGV`, one thread per process."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", "-m", "attngan",
                           *map(str, argv)], capture_output=True, text=True, env=ONE_THREAD,
                          timeout=timeout)


def attngan(*argv, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m attngan ARGV` in one process of one thread."""
    return subprocess.run([sys.executable, "-m", "attngan", *map(str, argv)],
                          capture_output=True, text=True, env=ONE_THREAD, timeout=timeout)


def _on_ranks(function, size: int, *args) -> dict:
    """function(world, *args) on `size` forked ranks in torchrun's environment; rank -> result
    (picklable)."""
    port, results = _free_port(), mp.Manager().dict()

    def run(rank):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        world, _ = join_world(torch.device("cpu"))
        try:
            results[rank] = function(world, *args)
        finally:
            leave_world()
    mp.start_processes(run, nprocs=size, start_method="fork")
    return dict(results)


def _gathered_loss(world: World, features: torch.Tensor):
    """A loss of every rank's rows together (a contrastive-like one: each row against all),
    and the gradient of this rank's rows."""
    mine = features.chunk(world.size)[world.rank].clone().requires_grad_()
    every = gather_with_grad(mine, world)
    loss = torch.logsumexp(every @ every.T, dim=1).mean()
    loss.backward()
    return loss.item(), (mine.grad / world.size).tolist()   # DDP averages over the ranks


def test_a_loss_of_gathered_features_has_one_process_gradient():
    features = torch.randn(6, 5, dtype=torch.float64)
    one = features.clone().requires_grad_()
    loss = torch.logsumexp(one @ one.T, dim=1).mean()
    loss.backward()
    ranks = _on_ranks(_gathered_loss, 2, features)
    assert [ranks[rank][0] for rank in (0, 1)] == pytest.approx([loss.item()] * 2, rel=1e-12)
    gradient = torch.tensor(ranks[0][1] + ranks[1][1], dtype=torch.float64)
    torch.testing.assert_close(gradient, one.grad, rtol=1e-12, atol=1e-12)


def _gather_and_collect(world: World):
    parts = gather(torch.full((2,), float(world.rank)), world).tolist()
    return parts, gather_to_main({f"chunk {world.rank}": world.rank}, world)


def test_gather_and_gather_to_main():
    ranks = _on_ranks(_gather_and_collect, 2)
    assert ranks[0][0] == ranks[1][0] == [0.0, 0.0, 1.0, 1.0]
    assert ranks[0][1] == {"chunk 0": 0, "chunk 1": 1} and ranks[1][1] == {}
    assert gather(torch.ones(1), SINGLE).tolist() == [1.0]


def test_a_global_batch_the_ranks_cannot_share_is_refused():
    assert local_share(20, World(0, 4), "gan.batch_size") == 5
    with pytest.raises(ValueError, match="gan.batch_size=20 is the global batch, and 3 ranks "
                                         "cannot share it equally; set gan.batch_size to a "
                                         "multiple of 3"):
        local_share(20, World(0, 3), "gan.batch_size")


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    return train_tiny_gan(tmp_path_factory.mktemp("distributed"), steps=2)[0]


def test_evaluate_on_two_ranks_equals_one_process(gan_run, tmp_path):
    """Three chunks of images (64, 64, 22) shared by two ranks: the same numbers to the last
    digit as one process."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    for result in (attngan("evaluate", "--ckpt", gan_run, "--samples", 150, "--out", one),
                   torchrun(2, "evaluate", "--ckpt", gan_run, "--samples", 150, "--out", two)):
        assert result.returncode == 0, result.stderr[-2000:]
    single, shared = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["protocol"].pop("processes"), shared["protocol"].pop("processes")) == (1, 2)
    assert shared == single
