"""The training step's switches (attngan.train.speed): what run.speed resolves to, that each
switch that runs on the CPU trains as the eager float32 step does, BatchNorm folding, the
networks compiling as one graph each, optimizer state across switches, background checkpoints,
and on a GPU no host synchronisation and CUDA-graph replay against the eager step.

The rule the switches are held to (the project's: float32 within about 1e-5 relative of a
float64 reference): over STEPS steps from the same weights, batches and random draws, the
error of a run against the float64 eager step, on every step's losses (relative to the largest
loss) and on the first step's gradients of every parameter (relative to the largest entry of
each), is at most twice the eager float32 step's own error plus 1e-5. Later gradients and the
weights are not compared: Adam's first steps are nearly sign(gradient), so a weight whose
gradient is of rounding size moves by ±lr either way, which the losses hardly see but any
weight-wise measure does. bf16 computes in another precision: held to the flash-attention rule
of the ops, at most twice the error of the same step under plain bfloat16 autocast (the frozen
networks not cast once) plus 1e-5, and its losses within 5e-2 of the float64 step's.
"""

import contextlib
import copy
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch.overrides import TorchFunctionMode

from attngan.config import ConfigError, RunConfig, load_config
from attngan.data.loader import float_images
from attngan.files import OutputError
from attngan.nn.discriminator import build_discriminators
from attngan.nn.generator import Generator
from attngan.nn.image_encoder import InceptionEncoder, SmallImageEncoder
from attngan.nn.inception import InceptionTrunk, fold_batch_norms
from attngan.train import gan as gan_module
from attngan.train import speed
from attngan.train.checkpoint import CheckpointWriter, load_checkpoint
from attngan.train.damsm import DAMSMTrainer
from attngan.train.losses import discriminator_loss, generator_loss
from attngan.train.speed import (
    FAITHFUL,
    StepSettings,
    adam,
    frozen_network,
    load_optimizer_state,
    step_settings,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_train_step import VOCAB_SIZE, make_trainer, preset_config, random_batch  # noqa: E402

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TINY = [
    "data.base_size=16",
    "data.branch_num=2",
    "text_encoder.embedding_dim=16",
    "text_encoder.hidden_dim=16",
    "image_encoder.input_size=32",
    "image_encoder.width=8",
    "gan.ngf=8",
    "gan.ndf=8",
    "gan.r_num=1",
    "gan.batch_size=4",
    "damsm.batch_size=8",
    "run.impl=auto",
]
STEPS = 4
FLOOR = 1e-5


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models: a second thread only adds synchronisation (see test_gan_training.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- what run.speed and the switches resolve to -------------------------------------------


def test_speed_resolves_per_device_and_stage(monkeypatch):
    faithful, fast = RunConfig(), RunConfig(speed="fast")
    assert step_settings(faithful, CPU) == step_settings(faithful, CUDA) == FAITHFUL
    for bfloat16, precision in ((True, "bf16"), (False, "fp32")):  # on a CPU: what is faster
        monkeypatch.setattr(speed, "cpu_has_bfloat16", lambda value=bfloat16: value)
        assert step_settings(fast, CPU) == StepSettings(precision, fused_adam=True, compile=True)
        assert step_settings(fast, CPU, "damsm") == StepSettings(fused_adam=True)
    everything = StepSettings("bf16", True, True, True, True, True)
    assert step_settings(fast, CUDA) == everything
    assert step_settings(fast, CUDA, stage="damsm") == StepSettings(
        "bf16", True, True, True, True, False
    )
    loop = RunConfig(speed="fast", impl="loop")  # the original's loop reads on the host
    assert not step_settings(loop, CUDA).cuda_graphs and not step_settings(loop, CUDA).compile
    assert step_settings(loop, CUDA, stage="damsm").compile
    # a switch set in the config wins over run.speed either way
    assert step_settings(
        RunConfig(speed="fast", compile=False, precision="tf32"), CUDA
    ) == StepSettings("tf32", True, True, True, False, True)
    assert step_settings(RunConfig(fused_adam=True), CPU) == StepSettings(fused_adam=True)


@pytest.mark.parametrize(
    "run, device, stage, message",
    [
        (
            dict(cuda_graphs=True),
            CPU,
            "gan",
            r"run.cuda_graphs=true cannot run here: CUDA graphs "
            r"need a CUDA device; leave run.cuda_graphs unset",
        ),
        (
            dict(precision="tf32"),
            CPU,
            "gan",
            "run.precision=tf32 cannot run here: TF32 is a format",
        ),
        (dict(cudnn_benchmark=True), CPU, "gan", "run.cudnn_benchmark=true cannot run here"),
        (dict(cuda_graphs=True), CUDA, "damsm", "DAMSM pretraining trains the text encoder"),
        (
            dict(cuda_graphs=True, impl="loop"),
            CUDA,
            "gan",
            "run.impl=loop reads the caption lengths",
        ),
        (
            dict(compile=True, impl="loop"),
            CPU,
            "gan",
            "run.compile=true cannot run here: run.impl=loop",
        ),
    ],
)
def test_a_switch_that_cannot_run_is_one_clear_error(run, device, stage, message):
    with pytest.raises(ConfigError, match=message):
        step_settings(RunConfig(**run), device, stage)


def test_switches_are_config_keys_a_resume_may_change():
    from attngan.train.checkpoint import RESUME_MAY_CHANGE

    config = load_config("configs/shapes.yaml", ["run.speed=fast", "run.compile=false"])
    assert (config.run.speed, config.run.compile, config.run.precision) == ("fast", False, None)
    assert {
        f"run.{name}"
        for name in (
            "speed",
            "precision",
            "channels_last",
            "cudnn_benchmark",
            "fused_adam",
            "compile",
            "cuda_graphs",
        )
    } <= RESUME_MAY_CHANGE
    with pytest.raises(ConfigError, match="'run.speed' must be one of 'faithful', 'fast'"):
        load_config("configs/shapes.yaml", ["run.speed=quick"])


# --- each switch against the float64 eager step ----------------------------------------------


class _Float32Draws(TorchFunctionMode):
    """Random draws of randn_like in float32 whatever the dtype asked (the float64 reference
    then draws the float32 runs' numbers: the CPU draws another stream in float64)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.randn_like:
            like = args[0]
            return torch.randn(like.shape, device=like.device).to(like.dtype)
        return func(*args, **(kwargs or {}))


def _gradients(modules) -> list[torch.Tensor]:
    """The gradient of every trained parameter of `modules` (a step sets them to None only
    when the next one starts)."""
    return [
        p.grad.detach().double().cpu().clone()
        for module in modules
        for p in module.parameters()
        if p.grad is not None
    ]


def _state(trainer) -> dict:
    """A copy of everything a step changes: the networks, the EMA, the optimizers."""
    return copy.deepcopy(trainer.state_dict())


def _float32(state):
    """A copy of a state, its float64 tensors in float32, as a float32 run keeps them (the
    optimizers load the step counts without a copy and count on in place)."""
    if isinstance(state, torch.Tensor):
        return state.to(torch.float32 if state.dtype == torch.float64 else state.dtype, copy=True)
    if isinstance(state, dict):
        return {key: _float32(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_float32(value) for value in state)
    return state


def _gan_run(
    overrides=(), device=CPU, steps=STEPS, float64=False, precast=True, states=None
) -> dict:
    """`steps` GAN steps of the tiny config: every step's losses [steps, 9] and gradients, and
    the state each step started from. float64: the whole step in float64; not precast: under
    bf16, the frozen networks as they were given (autocast casts their weights at every call).
    `states` (a float64 run's): each step starts from that run's state, so every step is
    compared on the same weights. Without that, runs part after Adam's first step for reasons
    of Adam, not of the step: it moves a weight whose gradient is of rounding size by about
    ±lr, its sign decided by the rounding."""
    config = preset_config("shapes", device, [*TINY, *overrides])
    trainer = make_trainer(config, device)
    if not precast:
        plain = make_trainer(preset_config("shapes", device, TINY), device)
        trainer.text_encoder, trainer.image_encoder = plain.text_encoder, plain.image_encoder
    if float64:
        for module in (
            trainer.netG,
            trainer.netsD,
            trainer.ema.module,
            trainer.text_encoder,
            trainer.image_encoder,
        ):
            module.double()
    losses, gradients, started = [], [], []
    # in float64 the batch's images too (the step makes its uint8 levels float32)
    images64 = mock.patch.object(
        gan_module, "float_images", lambda images, device: float_images(images, device).double()
    )
    with (
        _Float32Draws() if float64 else contextlib.nullcontext(),
        images64 if float64 else contextlib.nullcontext(),
    ):
        for index in range(steps):
            if states is not None:
                trainer.load_state_dict(_float32(states[index]), "the float64 run's state")
            started.append(_state(trainer))
            values = trainer.step(random_batch(config, device, seed=index))
            losses.append(torch.stack([value.double().cpu() for value in values.values()]))
            gradients += _gradients([trainer.netG, *trainer.netsD])
    return {"losses": torch.stack(losses), "gradients": gradients, "states": started}


def _errors(run: dict, reference: dict) -> tuple[float, float]:
    """(loss error, gradient error) of `run` against `reference`: the largest difference of a
    loss relative to the largest loss, and of a gradient relative to the largest entry of its
    tensor."""
    losses = (run["losses"] - reference["losses"]).abs().max() / reference["losses"].abs().max()
    gradients = 0.0
    for value, expected in zip(run["gradients"], reference["gradients"], strict=True):
        scale = expected.abs().max()
        assert scale > 0, "a gradient of zeros compares nothing"
        gradients = max(gradients, float((value - expected).abs().max() / scale))
    return float(losses), gradients


@pytest.fixture(scope="module")
def float64_and_float32():
    """The eager step in float64 (the reference) and in float32 from the same states, and
    float32's own error."""
    float64 = _gan_run(float64=True)
    return float64, _errors(_gan_run(states=float64["states"]), float64)


def _check_rule(run: dict, float64_and_float32) -> None:
    float64, bounds = float64_and_float32
    for error, bound in zip(_errors(run, float64), bounds, strict=True):
        assert error <= 2 * bound + FLOOR, (error, bound)


@pytest.mark.parametrize("switch", ["run.channels_last=true", "run.fused_adam=true"])
def test_a_switch_trains_as_the_eager_float32_step(switch, float64_and_float32):
    _check_rule(_gan_run([switch], states=float64_and_float32[0]["states"]), float64_and_float32)


def test_the_compiled_step_trains_as_the_eager_float32_step(float64_and_float32):
    """All the CPU's float32 switches together, as run.speed=fast has them but bf16: the first
    step eager, the next ones compiled (the generator, each discriminator's loss, the generator
    step's loss: one graph each, fullgraph)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    run = _gan_run(
        ["run.channels_last=true", "run.fused_adam=true", "run.compile=true"],
        states=float64_and_float32[0]["states"],
    )
    assert counters["stats"]["unique_graphs"] >= graphs + 4
    _check_rule(run, float64_and_float32)


def test_the_bf16_step_follows_the_bf16_rule(float64_and_float32):
    float64, _ = float64_and_float32
    states = float64["states"]
    cast_once = _errors(_gan_run(["run.precision=bf16"], states=states), float64)
    autocast = _errors(_gan_run(["run.precision=bf16"], precast=False, states=states), float64)
    for error, plain in zip(cast_once, autocast, strict=True):
        assert error <= 2 * plain + FLOOR, (error, plain)
    assert cast_once[0] <= 5e-2, cast_once


def test_damsm_switches_train_as_the_eager_float32_step():
    """DAMSM pretraining with the CPU's switches (its image encoder compiled after the first
    step; bf16, which leaves the small encoder, trained whole, in float32) against its eager
    float32 step, on the same dropout masks: the first step's
    gradients within float32 rounding of each tensor (2e-5 of its largest entry, as the
    implementations of its word loss are held to), every step's losses within 1e-4 of the
    largest (measured: 1.5e-5 with channels_last, whose first Adam step moved a weight with a
    gradient of rounding size by ±lr the other way; Adam's first steps are nearly
    sign(gradient), at this lr 10 times the GAN's)."""

    def run(*overrides):
        config = preset_config("shapes", CPU, [*TINY, *overrides], stage="damsm")
        torch.manual_seed(0)
        trainer = DAMSMTrainer(config, VOCAB_SIZE, CPU)
        trainer.text_encoder.train()
        trainer.image_encoder.train()
        losses, gradients = [], None
        for index in range(STEPS):
            values = trainer.step(random_batch(config, CPU, index, "damsm"))
            losses.append(torch.stack(list(values.values())))
            gradients = gradients or _gradients([trainer.text_encoder, trainer.image_encoder])
        return {"losses": torch.stack(losses), "gradients": gradients}

    eager = run()
    for switch in (
        "run.channels_last=true",
        "run.fused_adam=true",
        "run.compile=true",
        "run.precision=bf16",
    ):
        loss_error, gradient_error = _errors(run(switch), eager)
        assert loss_error <= 1e-4 and gradient_error <= 2e-5, (switch, loss_error, gradient_error)


def test_damsm_bf16_runs_only_the_frozen_inception_trunk_in_bfloat16():
    """DAMSM pretraining with run.precision=bf16 and Inception: the frozen trunk computes in
    bfloat16 (in training mode, as pretraining runs it), the trained heads, the text encoder
    and the losses in float32, and only the heads and the text encoder get gradients."""

    def trainer(precision):
        inception = [
            "image_encoder.backbone=inception",
            "image_encoder.random_init=true",
            "image_encoder.input_size=80",
        ]
        overrides = [*TINY, *inception, f"run.precision={precision}"]
        config = preset_config("shapes", CPU, overrides, stage="damsm")
        return DAMSMTrainer(config, VOCAB_SIZE, CPU), config

    assert not trainer("fp32")[0].image_encoder.trunk_in_bfloat16
    bf16, config = trainer("bf16")
    encoder = bf16.image_encoder
    assert encoder.trunk_in_bfloat16
    seen = {}
    encoder.trunk.register_forward_hook(lambda m, i, out: seen.update(trunk=out[0].dtype))
    encoder.emb_features.register_forward_hook(lambda m, i, out: seen.update(heads=out.dtype))
    bf16.text_encoder.register_forward_hook(lambda m, i, out: seen.update(text=out[0].dtype))
    losses = bf16.step(random_batch(config, CPU, 0, "damsm"))
    assert seen == {"trunk": torch.bfloat16, "heads": torch.float32, "text": torch.float32}
    assert all(loss.dtype == torch.float32 and loss.isfinite() for loss in losses.values())
    assert all(p.grad is None for p in encoder.trunk.parameters())
    assert all(p.grad is not None for p in encoder.trainable_parameters())
    assert all(p.grad is not None for p in bf16.text_encoder.parameters())


# --- BatchNorm folding, frozen networks, compiling each network ---------------------------


def _randomize_batch_norms(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)


def test_folding_the_trunks_batch_norm_is_exact_in_float64():
    trunk = InceptionTrunk().double().eval()
    _randomize_batch_norms(trunk)
    images = torch.randn(2, 3, 80, 80, dtype=torch.float64, requires_grad=True)
    expected = trunk(images)
    (expected_gradient,) = torch.autograd.grad(sum(out.square().sum() for out in expected), images)
    folded = fold_batch_norms(InceptionTrunk().double().eval())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    folded = fold_batch_norms(copy.deepcopy(trunk))
    got = folded(images)
    (gradient,) = torch.autograd.grad(sum(out.square().sum() for out in got), images)
    for value, reference in zip([*got, gradient], [*expected, expected_gradient]):
        assert (value - reference).abs().max() <= 1e-12 * reference.abs().max()
    with pytest.raises(ValueError, match="put the network in eval mode first"):
        fold_batch_norms(InceptionTrunk().train())


def test_frozen_networks_cast_once_compute_as_autocast_does():
    """bf16: the frozen image encoder's convolutions and linear layers cast to bfloat16 once
    give autocast's results bit for bit (autocast casts the same weights at every call); its
    normalizations stay float32; the network given is left as it is."""
    encoder = InceptionEncoder(16, 80, InceptionTrunk()).eval().requires_grad_(False)
    _randomize_batch_norms(encoder)
    assert frozen_network(encoder, FAITHFUL, CPU) is encoder
    cast = frozen_network(encoder, StepSettings("bf16"), CPU)
    assert encoder.emb_features.weight.dtype == torch.float32
    assert (
        cast.emb_features.weight.dtype
        == cast.trunk.Mixed_6e.branch1x1.conv.weight.dtype
        == torch.bfloat16
        and cast.trunk.Mixed_6e.branch1x1.bn.weight.dtype == torch.float32
    )
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.autocast("cpu", torch.bfloat16):
        for value, expected in zip(cast(images), encoder(images)):
            assert value.dtype == torch.bfloat16 and torch.equal(value, expected)
    folded = frozen_network(encoder, StepSettings(compile=True, channels_last=True), CPU, fold=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert folded.trunk.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    for value, expected in zip(folded(images), encoder(images)):
        assert (value - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_every_network_compiles_as_one_graph():
    """The networks of the CUB preset, at small widths (ngf 8, ndf 4, batch 2; Inception at
    80 px), traced by torch.compile with fullgraph=True, which fails at any graph break: the
    generator, each discriminator's loss, the generator step's loss through Inception (folded,
    as the GAN runs it) and through the small encoder, and Inception in training mode (as DAMSM
    pretraining runs it)."""
    config = load_config(
        "configs/birds.yaml", ["image_encoder.random_init=true", "gan.ngf=8", "gan.ndf=4"]
    )
    text_dim, batch = config.text_encoder.hidden_dim, 2
    generator = Generator.from_config(config, text_dim, impl="auto")
    discriminators = build_discriminators(config, text_dim)
    words, sentence = torch.randn(batch, text_dim, 18), torch.randn(batch, text_dim)
    lengths = torch.tensor([18, 7])

    def traced(function):
        torch._dynamo.reset()
        return torch.compile(function, fullgraph=True, backend="eager", dynamic=False)

    fakes, *_ = traced(generator)(
        torch.randn(batch, 100), sentence, words, lengths, return_attention=False
    )
    assert [fake.shape[-1] for fake in fakes] == [64, 128, 256]
    for net, fake in zip(discriminators, fakes):
        traced(discriminator_loss)(net, fake.detach(), fake.detach(), sentence).backward()
    inception = InceptionEncoder(text_dim, 80, InceptionTrunk()).eval().requires_grad_(False)
    mu, logvar = torch.randn(batch, 100, requires_grad=True), torch.randn(batch, 100)
    fakes = [fake.detach().requires_grad_() for fake in fakes]
    discriminators.requires_grad_(False)
    for encoder in (
        fold_batch_norms(copy.deepcopy(inception)),
        SmallImageEncoder(text_dim, 64, 8).eval().requires_grad_(False),
    ):
        losses = traced(generator_loss)(
            discriminators,
            encoder,
            fakes,
            mu,
            logvar,
            words,
            sentence,
            lengths,
            torch.tensor([3, 4]),
            lambda_damsm=5.0,
            gamma1=4.0,
            gamma2=5.0,
            gamma3=10.0,
            impl="auto",
        )
        losses["g_total"].backward()
        assert sorted(losses) == ["g_adv", "g_total", "kl", "s0", "s1", "w0", "w1"]
    regions, code = traced(inception.train())(fakes[-1].detach())
    assert code.shape == (batch, text_dim)


# --- optimizer state across switches, background checkpoints -------------------------------


def test_optimizer_state_moves_between_switches():
    """A resumed run may change fused_adam and cuda_graphs: the loaded state keeps the new
    optimizer's kernel flags (torch takes the saved ones) and computes as before."""
    torch.manual_seed(0)
    start = torch.randn(40)
    gradients = [torch.randn(40) for _ in range(4)]

    def optimizer(settings, state=None):
        parameter = torch.nn.Parameter(start.clone())
        result = adam([parameter], 1e-3, (0.5, 0.999), settings)
        if state is not None:
            load_optimizer_state(result, state)
        return parameter, result

    def steps(parameter, optim, grads):
        for gradient in grads:
            parameter.grad = gradient.clone()
            optim.step()

    plain_parameter, plain = optimizer(FAITHFUL)
    steps(plain_parameter, plain, gradients[:2])
    # (a copy, as a checkpoint file gives: loading shares the state's tensors)
    fused_parameter, fused = optimizer(
        StepSettings(fused_adam=True), copy.deepcopy(plain.state_dict())
    )
    fused_parameter.data.copy_(plain_parameter.data)
    assert fused.param_groups[0]["fused"] is True and not fused.param_groups[0]["foreach"]
    steps(fused_parameter, fused, gradients[2:])
    steps(plain_parameter, plain, gradients[2:])
    torch.testing.assert_close(fused_parameter, plain_parameter, rtol=1e-6, atol=1e-7)
    back_parameter, back = optimizer(FAITHFUL, fused.state_dict())
    assert not back.param_groups[0]["fused"]
    assert back.state[back_parameter]["step"].device.type == "cpu"


def _slow_writes(monkeypatch, seconds: float, events: list) -> None:
    import attngan.train.checkpoint as checkpoint_module

    save = checkpoint_module.save_checkpoint

    def slow_save(path, payload):
        events.append(("start", Path(path).name, threading.current_thread().name))
        time.sleep(seconds)
        save(path, payload)
        events.append(("end", Path(path).name))

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", slow_save)


def test_checkpoints_are_written_in_the_background_one_at_a_time(monkeypatch, tmp_path):
    events = []
    _slow_writes(monkeypatch, 0.3, events)
    weights = torch.zeros(3)
    with CheckpointWriter() as writer:
        started = time.perf_counter()
        writer.save(tmp_path / "a.pt", {"kind": "gan", "weights": weights})
        assert time.perf_counter() - started < 0.2  # the training goes on meanwhile
        weights += 1  # what it changes after the save
        writer.save(tmp_path / "b.pt", {"kind": "gan", "weights": weights})
    assert [event[:2] for event in events] == [
        ("start", "a.pt"),
        ("end", "a.pt"),
        ("start", "b.pt"),
        ("end", "b.pt"),
    ]
    assert events[0][2] != threading.current_thread().name
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["weights"], torch.zeros(3))
    assert torch.equal(load_checkpoint(tmp_path / "b.pt")["weights"], torch.ones(3))


def test_a_checkpoint_under_way_is_finished_on_ctrl_c_and_errors_surface(monkeypatch, tmp_path):
    _slow_writes(monkeypatch, 0.3, [])
    with pytest.raises(KeyboardInterrupt):
        with CheckpointWriter() as writer:
            writer.save(tmp_path / "run.pt", {"kind": "gan", "step": 7})
            raise KeyboardInterrupt
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 7  # whole, not a temporary
    assert [path.name for path in tmp_path.iterdir()] == ["run.pt"]
    writer = CheckpointWriter()
    (tmp_path / "folder.pt").mkdir()  # replacing a folder fails
    writer.save(tmp_path / "folder.pt", {"kind": "gan"})
    with pytest.raises(OutputError, match="folder.pt .*Is a directory"):
        writer.wait()
    writer.wait()  # raised once


# --- on a GPU ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_fast_steps_never_wait_for_the_gpu(no_gpu_synchronisation):
    """run.speed=fast on a GPU (bf16, channels_last, cudnn.benchmark, fused Adam, compile, the
    GAN's update replayed as a CUDA graph), fed batches as the data loader gives them (CPU
    tensors): after the warm-up no step synchronises with the GPU."""
    from attngan.train.gan import GRAPH_WARMUP_STEPS

    config = preset_config("shapes", CUDA, ["run.speed=fast"])
    trainer, batch = make_trainer(config, CUDA), random_batch(config, CPU)
    damsm = DAMSMTrainer(config, VOCAB_SIZE, CUDA)
    damsm_batch = random_batch(config, CPU, stage="damsm")
    for _ in range(GRAPH_WARMUP_STEPS + 1):
        trainer.step(batch)
        damsm.step(damsm_batch)
    assert trainer._graph is not None
    with no_gpu_synchronisation():
        for _ in range(2):
            trainer.step(batch)
            damsm.step(damsm_batch)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "switches", [[], ["run.fused_adam=true", "run.compile=true"]], ids=["eager", "compiled"]
)
def test_cuda_graph_replays_the_eager_step(switches):
    """The update captured once and replayed against the same switches without the graph, over
    warm-up, capture and replays: the same kernels on the same random draws, so the same
    losses and weights but for cuDNN's atomics (within 1e-4 by the rule's measures)."""
    from attngan.train.gan import GRAPH_WARMUP_STEPS

    steps = GRAPH_WARMUP_STEPS + 3
    eager = _gan_run(switches, CUDA, steps)
    graphed = _gan_run([*switches, "run.cuda_graphs=true"], CUDA, steps)
    loss_error, weight_error = _errors(graphed, eager)
    assert loss_error <= 1e-4 and weight_error <= 1e-4, (loss_error, weight_error)


def test_a_loaded_optimizer_state_takes_its_parameters_memory_layout():
    """Resuming fused Adam on channels_last weights: torch loads the moments contiguous, and
    its fused kernel paired them with the weights by memory position (wrong updates)."""
    weights = torch.randn(4, 3, 5, 5)
    gradients = [torch.randn(4, 3, 5, 5) for _ in range(2)]
    results = []
    for channels_last, fused in ((True, True), (False, False)):
        layout = torch.channels_last if channels_last else torch.contiguous_format
        parameter = weights.clone().to(memory_format=layout).requires_grad_()
        optimizer = torch.optim.Adam([parameter], lr=0.1, fused=fused)
        parameter.grad = gradients[0].to(memory_format=layout)
        optimizer.step()
        state = copy.deepcopy(optimizer.state_dict())
        for name in ("exp_avg", "exp_avg_sq"):
            state["state"][0][name] = state["state"][0][name].contiguous()  # as a file has it
        resumed = torch.optim.Adam([parameter], lr=0.1, fused=fused)
        load_optimizer_state(resumed, state)
        parameter.grad = gradients[1].to(memory_format=layout)
        resumed.step()
        results.append(parameter.detach().contiguous())
    torch.testing.assert_close(results[0], results[1])
