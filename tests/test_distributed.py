"""Several processes under torchrun (gloo on the CPU): what two ranks compute equals what one
process computes, where the math allows (docs/DESIGN.md, "Several GPUs and machines").

Processes are started the two ways a user starts them: `torchrun` for whole commands, and, for
the collectives alone, forked ranks given torchrun's environment.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from attngan.distributed import (
    SINGLE,
    World,
    gather,
    gather_to_main,
    gather_with_grad,
    join_world,
    leave_world,
    local_share,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gan_training import single_thread, train_tiny_gan  # noqa: E402,F401
from test_step_switches import TINY  # noqa: E402

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(processes: int, *argv, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m attngan ARGV`, one thread per process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "attngan",
            *map(str, argv),
        ],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=timeout,
    )


def attngan(*argv, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m attngan ARGV` in one process of one thread."""
    return subprocess.run(
        [sys.executable, "-m", "attngan", *map(str, argv)],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=timeout,
    )


def _on_ranks(function, size: int, *args) -> dict:
    """function(world, *args) on `size` forked ranks in torchrun's environment; rank -> result
    (picklable)."""
    port, results = _free_port(), mp.Manager().dict()

    def run(rank):
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(size),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
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
    return loss.item(), (mine.grad / world.size).tolist()  # DDP averages over the ranks


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
    with pytest.raises(
        ValueError,
        match="gan.batch_size=20 is the global batch, and 3 ranks "
        "cannot share it equally; set gan.batch_size to a "
        "multiple of 3",
    ):
        local_share(20, World(0, 3), "gan.batch_size")


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    return train_tiny_gan(tmp_path_factory.mktemp("distributed"), steps=2)[0]


def test_evaluate_on_two_ranks_equals_one_process(gan_run, tmp_path):
    """Three chunks of images (64, 64, 22) shared by two ranks: the same numbers to the last
    digit as one process."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    for result in (
        attngan("evaluate", "--ckpt", gan_run, "--samples", 150, "--out", one),
        torchrun(2, "evaluate", "--ckpt", gan_run, "--samples", 150, "--out", two),
    ):
        assert result.returncode == 0, result.stderr[-2000:]
    single, shared = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["protocol"].pop("processes"), shared["protocol"].pop("processes")) == (1, 2)
    assert shared == single


# --- a GAN step on two ranks -----------------------------------------------------------------

HALVES = (slice(0, 2), slice(2, 4))


def _tiny_gan(world: World = SINGLE):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_train_step import make_trainer, preset_config, random_batch

    config = preset_config("shapes", torch.device("cpu"), TINY)
    return (
        config,
        make_trainer(config, torch.device("cpu"), world),
        random_batch(config, torch.device("cpu"), seed=1),
    )


def _trained(trainer) -> list:
    """(name, parameter) of the generator and every discriminator."""
    return [
        *trainer.netG.named_parameters(),
        *(
            (f"D{i}.{name}", p)
            for i, net in enumerate(trainer.netsD)
            for name, p in net.named_parameters()
        ),
    ]


def _gan_step_on_rank(world: World) -> dict:
    """One GAN step of this rank's half of the global batch, its noise from seed 100 + rank;
    the gradients the step ended with (averaged over the ranks) and the weights after it."""
    _, trainer, batch = _tiny_gan(world)
    half = HALVES[world.rank]
    torch.manual_seed(100 + world.rank)
    losses = trainer.step(
        {
            "images": [level[half] for level in batch["images"]],
            "captions": batch["captions"][half],
            "lengths": batch["lengths"][half],
            "class_ids": batch["class_ids"][half],
        }
    )
    return {
        "losses": {name: float(value) for name, value in losses.items()},
        "gradients": {name: p.grad.clone() for name, p in _trained(trainer)},
        "weights": {name: p.detach().clone() for name, p in _trained(trainer)},
    }


def _two_halves_in_one_process() -> dict:
    """The step as one process computes it from the two halves: each half through the networks
    on its own (its own BatchNorm statistics, its own noise), each discriminator's gradient the
    mean of the halves', and the generator's the mean of the halves' adversarial and KL terms'
    plus the DAMSM term of the whole batch's images and captions."""
    from attngan.data.loader import float_images
    from attngan.train.losses import (
        damsm_generator_loss,
        discriminator_loss,
        generator_adversarial_loss,
        kl_loss,
    )

    config, trainer, batch = _tiny_gan()
    netG, netsD = trainer.netG, trainer.netsD
    netG.train()
    netsD.train()
    halves = []
    for rank, half in enumerate(HALVES):
        with torch.no_grad():
            words, sentence = trainer.text_encoder(batch["captions"][half], batch["lengths"][half])
        torch.manual_seed(100 + rank)
        noise = torch.randn(2, config.gan.z_dim)
        fakes, _, mu, logvar = netG(
            noise, sentence, words, batch["lengths"][half], return_attention=False
        )
        halves.append(
            dict(
                reals=[float_images(level[half], "cpu") for level in batch["images"]],
                words=words,
                sentence=sentence,
                lengths=batch["lengths"][half],
                class_ids=batch["class_ids"][half],
                fakes=fakes,
                mu=mu,
                logvar=logvar,
            )
        )
    for i, (net, optimizer) in enumerate(zip(netsD, trainer.optimizers_d)):
        optimizer.zero_grad(set_to_none=True)
        (
            sum(
                discriminator_loss(net, h["reals"][i], h["fakes"][i].detach(), h["sentence"])
                for h in halves
            )
            / 2
        ).backward()
        optimizer.step()
    netsD.requires_grad_(False)
    own_terms = (
        sum(
            generator_adversarial_loss(netsD, h["fakes"], h["sentence"])
            + kl_loss(h["mu"], h["logvar"])
            for h in halves
        )
        / 2
    )

    def whole(name):
        return torch.cat([h[name] for h in halves])

    damsm = damsm_generator_loss(
        trainer.image_encoder,
        torch.cat([h["fakes"][-1] for h in halves]),
        whole("words"),
        whole("sentence"),
        whole("lengths"),
        whole("class_ids"),
        gamma1=config.damsm.gamma1,
        gamma2=config.damsm.gamma2,
        gamma3=config.damsm.gamma3,
        impl=config.run.impl,
    )
    trainer.optimizer_g.zero_grad(set_to_none=True)
    (own_terms + config.gan.lambda_damsm * sum(damsm.values())).backward()
    trainer.optimizer_g.step()
    netsD.requires_grad_(True)
    return {
        "gradients": {name: p.grad.clone() for name, p in _trained(trainer)},
        "weights": {name: p.detach().clone() for name, p in _trained(trainer)},
    }


def test_a_gan_step_on_two_ranks_equals_the_two_halves_in_one_process():
    ranks = _on_ranks(_gan_step_on_rank, 2)
    reference = _two_halves_in_one_process()
    lr = 4e-4  # the shapes preset's largest
    for name, expected in reference["gradients"].items():
        for rank in (0, 1):  # every rank holds the same
            got = ranks[rank]["gradients"][name]
            scale = expected.abs().max()
            assert scale > 0, name
            assert (got - expected).abs().max() <= 1e-5 * scale, (rank, name)
            # Adam's first step is nearly lr·sign(gradient): rounding moves at most that
            assert (
                ranks[rank]["weights"][name] - reference["weights"][name]
            ).abs().max() <= 2 * lr, (rank, name)


# --- whole commands under torchrun -----------------------------------------------------------


def _tiny_settings(command: str, data: Path, *extra: str) -> list:
    """--config and --set arguments of `command` ("pretrain-damsm" or "train") for a tiny run
    on the data set `data` (16 training images)."""
    common = ["data.base_size=16", "data.branch_num=2", "run.device=cpu", f"data.root={data}"]
    own = (
        [
            "text_encoder.embedding_dim=16",
            "text_encoder.hidden_dim=16",
            "text_encoder.dropout=0",
            "image_encoder.input_size=32",
            "image_encoder.width=8",
            "damsm.epochs=1",
            "damsm.eval_candidates=4",
            "damsm.eval_folds=2",
            "damsm.log_every=1",
        ]
        if command == "pretrain-damsm"
        else [
            "gan.ngf=8",
            "gan.ndf=8",
            "gan.r_num=1",
            "gan.batch_size=4",
            "gan.log_every=1",
            "gan.sample_every=1000",
        ]
    )
    settings = [*common, *own, *extra]
    return [command, "--config", "shapes", *sum((["--set", item] for item in settings), [])]


@pytest.fixture(scope="module")
def data_set(gan_run):
    return gan_run.parent / "data"  # the tiny run's synthetic set (train_tiny_gan)


def test_a_damsm_step_on_two_ranks_equals_one_process_on_the_global_batch(data_set, tmp_path):
    """The word and sentence losses see every caption and image of the global batch: one step
    (the whole training split as one batch of 16) gives one process's losses and weights, to
    float32 rounding (dropout off, the small encoder's GroupNorm: nothing else differs)."""
    runs = {}
    for name, launch in (("one", attngan), ("two", lambda *a: torchrun(2, *a))):
        result = launch(
            *_tiny_settings("pretrain-damsm", data_set, "damsm.batch_size=16"),
            "--out",
            tmp_path / name,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = torch.load(
            tmp_path / name / "checkpoints" / "damsm_last.pt", weights_only=True
        )
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs[name]["losses"] = json.loads(lines[0])
    assert {k: v for k, v in runs["two"]["losses"].items() if k != "seconds"} == {
        k: v for k, v in runs["one"]["losses"].items() if k != "seconds"
    }
    for part in ("text_encoder", "image_encoder"):
        for key, expected in runs["one"][part].items():
            got = runs["two"][part][key]
            scale = max(float(expected.abs().max()), 1e-12)
            assert (got.float() - expected.float()).abs().max() <= 1e-5 * scale, (part, key)
    assert len(runs["two"]["rng"]) == 2 and isinstance(runs["one"]["rng"], dict)


def test_a_run_on_two_ranks_resumes_and_refuses_another_world_size(data_set, gan_run, tmp_path):
    damsm = gan_run.parent / "damsm"
    run = tmp_path / "gan"
    first = torchrun(
        2,
        *_tiny_settings("train", data_set, "gan.max_steps=2", "gan.checkpoint_every=2"),
        "--damsm",
        damsm,
        "--out",
        run,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    again = attngan(
        *_tiny_settings("train", data_set, "gan.max_steps=4", "gan.checkpoint_every=2"),
        "--damsm",
        damsm,
        "--out",
        run,
        "--resume",
    )
    assert again.returncode == 2
    assert (
        "was trained on 2 processes, each with random streams of its own that it "
        "continues, and this run has 1; resume it on 2" in again.stderr
    )
    resumed = torchrun(
        2,
        *_tiny_settings("train", data_set, "gan.max_steps=4", "gan.checkpoint_every=2"),
        "--damsm",
        damsm,
        "--out",
        run,
        "--resume",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert torch.load(run / "checkpoints" / "gan_last.pt", weights_only=True)["step"] == 4


def _training_in_background(data_set: Path, damsm: Path, run: Path, **options):
    """`torchrun` of a long tiny GAN run on 2 ranks into `run`, checkpointing every step,
    returned once its first checkpoint is written."""
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "attngan",
            *map(
                str,
                _tiny_settings("train", data_set, "gan.max_steps=100000", "gan.checkpoint_every=1"),
            ),
            "--damsm",
            str(damsm),
            "--out",
            str(run),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ONE_THREAD,
        **options,
    )
    deadline = time.time() + 120
    while not (run / "checkpoints" / "gan_last.pt").exists():
        assert launcher.poll() is None and time.time() < deadline, launcher.stderr.read()[-2000:]
        time.sleep(0.2)
    return launcher


def test_a_rank_that_dies_ends_the_run(data_set, gan_run, tmp_path):
    """One rank killed outright mid-run: torchrun ends the other and fails, in seconds."""
    launcher = _training_in_background(data_set, gan_run.parent / "damsm", tmp_path / "gan")
    workers = [
        int(pid)
        for pid in subprocess.run(
            ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True
        ).stdout.split()
    ]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    started = time.time()
    try:
        status = launcher.wait(timeout=60)
    finally:
        launcher.kill()
    assert status != 0 and time.time() - started < 60


def test_ctrl_c_ends_every_rank(data_set, gan_run, tmp_path):
    """Ctrl-C in a terminal interrupts every process of the foreground group: each rank stops,
    the run's last checkpoint is whole, and the message says how to go on."""
    run = tmp_path / "gan"
    launcher = _training_in_background(
        data_set, gan_run.parent / "damsm", run, start_new_session=True
    )
    os.killpg(launcher.pid, signal.SIGINT)
    try:
        _, errors = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    assert "attngan train: interrupted; the same command with --resume goes on" in errors
    assert torch.load(run / "checkpoints" / "gan_last.pt", weights_only=True)["step"] > 0
    assert subprocess.run(["pgrep", "-f", str(run)], capture_output=True).stdout == b""


def test_a_machine_that_never_joins_ends_the_run(gan_run, tmp_path):
    """Two machines named, one started: the rendezvous gives up after its join timeout (here
    5 s) with torchrun's RendezvousTimeoutError, before any attngan process starts."""
    started = time.time()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
            "--rdzv-id=lonely",
            "--rdzv-conf=join_timeout=5",
            "-m",
            "attngan",
            "evaluate",
            "--ckpt",
            str(gan_run),
            "--out",
            str(tmp_path / "evaluation.json"),
        ],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=120,
    )
    assert result.returncode != 0 and time.time() - started < 60
    assert "RendezvousTimeoutError" in result.stderr
    assert not (tmp_path / "evaluation.json").exists()


# --- GPUs: NCCL, one GPU per rank, SyncBatchNorm ---------------------------------------------


@pytest.mark.gpu
def test_gpu_runs_under_torchrun(data_set, gan_run, tmp_path):
    """NCCL on as many GPUs as there are, up to 2 (with one, world size 1 under torchrun): DAMSM
    pretraining and a few GAN steps run; on two, the DAMSM step of the global batch is one
    process's (SyncBatchNorm in the encoders: the small one has none, so the same numbers)."""
    ranks = min(2, torch.cuda.device_count())
    gpu = ("run.device=cuda",)
    runs = {}
    for name, launch in (("one", attngan), ("ranks", lambda *a: torchrun(ranks, *a))):
        result = launch(
            *_tiny_settings("pretrain-damsm", data_set, "damsm.batch_size=16", *gpu),
            "--out",
            tmp_path / name,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = torch.load(
            tmp_path / name / "checkpoints" / "damsm_last.pt", weights_only=True, map_location="cpu"
        )
    for key, expected in runs["one"]["text_encoder"].items():
        scale = max(float(expected.abs().max()), 1e-12)
        assert (runs["ranks"]["text_encoder"][key] - expected).abs().max() <= 1e-4 * scale, key
    result = torchrun(
        ranks,
        *_tiny_settings("train", data_set, "gan.max_steps=3", *gpu),
        "--damsm",
        tmp_path / "ranks",
        "--out",
        tmp_path / "gan",
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _sync_batch_norm_on_rank(world: World) -> list:
    """A BatchNorm layer under data_parallel on this rank's GPU, fed this rank's half of a
    fixed batch: its output (SyncBatchNorm normalises by the whole batch's statistics)."""
    from attngan.distributed import data_parallel

    device = torch.device("cuda", world.local_rank)
    torch.manual_seed(0)
    inputs = torch.randn(8, 3, 4, 4).to(device)  # drawn as the test draws them
    layer = data_parallel(torch.nn.BatchNorm2d(3).to(device), world, device)
    return layer(inputs.chunk(world.size)[world.rank]).cpu().tolist()


@pytest.mark.gpu
def test_gpu_batch_norm_is_synchronised_across_ranks():
    if torch.cuda.device_count() < 2:
        pytest.skip("SyncBatchNorm across ranks needs two GPUs; this machine has one")
    port, results = _free_port(), mp.Manager().dict()
    mp.start_processes(_spawned_rank, args=(port, results), nprocs=2, start_method="spawn")
    torch.manual_seed(0)
    inputs = torch.randn(8, 3, 4, 4)
    whole = torch.nn.BatchNorm2d(3)(inputs)
    torch.testing.assert_close(torch.tensor(results[0] + results[1]), whole, rtol=1e-4, atol=1e-5)


def _spawned_rank(rank: int, port: int, results) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    world, _ = join_world(torch.device("cuda"))
    try:
        results[rank] = _sync_batch_norm_on_rank(world)
    finally:
        leave_world()
