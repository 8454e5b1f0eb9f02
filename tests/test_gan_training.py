"""GAN training loop (attngan/train/gan.py): a few steps on a tiny synthetic set move finite
losses, the run folder is complete, resume continues exactly, and bad runs fail clearly.

`make_tiny_run` (synthetic data + a one-epoch DAMSM, a few seconds), `train_tiny_gan` and the
`single_thread` fixture are shared with test_sampling.py and test_evaluate.py.
"""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from attngan.backend import ImplementationUnavailable
from attngan.config import load_config
from attngan.data.synthetic import make_synthetic
from attngan.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from attngan.train.damsm import DAMSMTrainer, pretrain_damsm, resolve_damsm_checkpoint
from attngan.train.gan import GANTrainer, load_gan, train_gan
from attngan.train.run import DivergenceWatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_train_step import VOCAB_SIZE, make_trainer, preset_config, random_batch  # noqa: E402

TINY = [
    "data.synthetic.num_train=16",
    "data.synthetic.num_test=12",
    "data.synthetic.canvas=32",
    "data.base_size=16",
    "data.branch_num=2",
    "text_encoder.embedding_dim=16",
    "text_encoder.hidden_dim=16",
    "image_encoder.input_size=32",
    "image_encoder.width=8",
    "damsm.batch_size=4",
    "damsm.epochs=1",
    "damsm.eval_candidates=4",
    "damsm.eval_folds=2",
    "gan.ngf=8",
    "gan.ndf=8",
    "gan.r_num=1",
    "gan.batch_size=4",
    "gan.log_every=1",
    "gan.sample_every=2",
    "gan.checkpoint_every=2",
    "run.device=cpu",
    "run.impl=auto",
    "run.threads=0",
]


def make_tiny_run(root: Path, *overrides: str):
    """(config, damsm run folder) of a tiny shapes set: 16 train images at 16/32 px."""
    config = load_config("configs/shapes.yaml", [f"data.root={root / 'data'}", *TINY, *overrides])
    make_synthetic(root / "data", config.data.synthetic)
    pretrain_damsm(config, root / "damsm", progress=False)
    return config, root / "damsm"


def train_tiny_gan(root: Path, steps: int = 2) -> tuple[Path, Path]:
    """(GAN run folder, DAMSM run folder) of a tiny run trained for `steps` steps."""
    config, damsm = make_tiny_run(root)
    train_gan(_with(config, max_steps=steps), damsm, root / "gan", progress=False)
    return root / "gan", damsm


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These models are tiny: a second thread only adds synchronisation, which on a shared
    2-core machine made a training step over 10x slower. run.threads=0 above keeps it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("gan"))


def _with(config, **gan):
    return dataclasses.replace(config, gan=dataclasses.replace(config.gan, **gan))


def _losses(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def test_a_few_steps_train_and_write_the_run(tiny, tmp_path):
    config, damsm = tiny
    run = tmp_path / "run"
    summary = train_gan(_with(config, max_steps=5), damsm, run, progress=False)
    assert summary["steps"] == 5 and summary["epochs"] == 1  # 4 batches per epoch
    lines = _losses(run)
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5]
    for name in ("d0", "d1", "g_adv", "w0", "w1", "s0", "s1", "kl", "g_total"):
        values = [line[name] for line in lines]
        assert all(torch.isfinite(torch.tensor(values))), name
        assert len(set(values)) > 1, f"{name} never changes"
    assert load_config(run / "config.yaml") == _with(config, max_steps=5)
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "captions.txt",
        "step_0000002.png",
        "step_0000004.png",
        "step_0000005.png",
    ]
    payload = load_checkpoint(run / "checkpoints" / "gan_last.pt", kind="gan")  # weights_only
    assert payload["step"] == 5 and payload["epoch"] == 1 and payload["batch_in_epoch"] == 1
    assert payload["damsm_sha256"] and Path(payload["damsm_checkpoint"]).is_file()
    ema, live = payload["trainer"]["ema"], payload["trainer"]["generator"]
    # The average lags the live weights only if these moved.
    assert any(not torch.equal(ema[k], live[k]) for k in live if k.endswith("weight"))
    netG, _, vocab, loaded_config, _ = load_gan(run)
    assert loaded_config == _with(config, max_steps=5) and len(vocab) > 10
    torch.testing.assert_close(netG.state_dict(), ema)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_precision_of_training_steps(precision, dtype, tmp_path, monkeypatch):
    """run.precision=bf16: the forward passes of the GAN steps run in bfloat16 (the fused ops
    receive bfloat16 features), DAMSM pretraining's small encoder, which it trains whole, in
    float32; losses stay finite, the weights float32; fp32 (the default) runs all in float32."""
    import attngan.train.losses as losses_module

    seen = {"damsm": set(), "gan": set(), "image encoder training": set()}
    word_loss, generator_loss = losses_module.damsm_word_loss, losses_module.damsm_generator_loss
    pretraining = [True]

    def spy_word_loss(words, lengths, regions, **kwargs):
        if pretraining[0]:
            seen["damsm"].add(regions.dtype)
        return word_loss(words, lengths, regions, **kwargs)

    def spy_generator_loss(image_encoder, image, *args, **kwargs):
        seen["gan"].add(image.dtype)
        # the frozen DAMSM in eval mode (BatchNorm on its running statistics, as the original)
        seen["image encoder training"].add(any(m.training for m in image_encoder.modules()))
        return generator_loss(image_encoder, image, *args, **kwargs)

    monkeypatch.setattr(losses_module, "damsm_word_loss", spy_word_loss)
    monkeypatch.setattr(losses_module, "damsm_generator_loss", spy_generator_loss)
    config, damsm = make_tiny_run(tmp_path, f"run.precision={precision}")
    pretraining[0] = False
    train_gan(_with(config, max_steps=3), damsm, tmp_path / "gan", progress=False)
    assert seen["damsm"] == {torch.float32} and seen["gan"] == {dtype}
    assert seen["image encoder training"] == {False}
    for line in _losses(tmp_path / "gan"):
        assert all(
            torch.isfinite(torch.tensor(value))
            for key, value in line.items()
            if key not in ("step", "epoch")
        ), line
    payload = load_checkpoint(tmp_path / "gan" / "checkpoints" / "gan_last.pt", kind="gan")
    assert all(
        value.dtype == torch.float32
        for value in payload["trainer"]["generator"].values()
        if value.is_floating_point()
    )


def _workers(config, count):
    return dataclasses.replace(config, data=dataclasses.replace(config.data, num_workers=count))


def test_resume_continues_exactly(tiny, tmp_path):
    """With any number of workers: the uninterrupted run loads in its own process, the
    interrupted one with 2 workers and, resumed, with 1."""
    config, damsm = tiny
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_gan(_with(_workers(config, 0), max_steps=5), damsm, whole, progress=False)
    train_gan(
        _with(_workers(config, 2), max_steps=3),
        damsm,
        split,  # stops mid-epoch
        progress=False,
    )
    train_gan(_with(_workers(config, 1), max_steps=5), damsm, split, resume=True, progress=False)
    assert _losses(split) == _losses(whole)
    a = load_checkpoint(whole / "checkpoints" / "gan_last.pt")
    b = load_checkpoint(split / "checkpoints" / "gan_last.pt")
    for part in ("generator", "ema"):
        for name, value in a["trainer"][part].items():
            assert torch.equal(value, b["trainer"][part][name]), (part, name)
    for net_a, net_b in zip(a["trainer"]["discriminators"], b["trainer"]["discriminators"]):
        for name, value in net_a.items():
            assert torch.equal(value, net_b[name]), name
    state_a = a["trainer"]["optimizer_g"]["state"]
    state_b = b["trainer"]["optimizer_g"]["state"]
    assert all(torch.equal(state_a[k]["exp_avg"], state_b[k]["exp_avg"]) for k in state_a)


def test_a_resumed_run_may_change_the_step_switches(tiny, tmp_path):
    """A run trained faithfully resumes with other switches (fused Adam, channels_last) and a
    lower learning rate: they are recorded in the run's config, its summary names the step's,
    and the optimizers carry on from the saved state with the new kernels and rate."""
    config, damsm = tiny
    run = tmp_path / "run"
    first = train_gan(_with(config, max_steps=2), damsm, run, progress=False)
    assert first["training_step"] == "fp32"
    switched = dataclasses.replace(
        config, run=dataclasses.replace(config.run, fused_adam=True, channels_last=True)
    )
    lower = config.gan.lr_g / 4
    summary = train_gan(
        _with(switched, max_steps=4, lr_g=lower), damsm, run, resume=True, progress=False
    )
    assert summary["steps"] == 4 and summary["training_step"] == "fp32, channels_last, fused_adam"
    assert load_config(run / "config.yaml").run.fused_adam is True
    assert load_config(run / "config.yaml").gan.lr_g == lower
    assert [line["step"] for line in _losses(run)] == [1, 2, 3, 4]
    optimizer = load_checkpoint(run / "checkpoints" / "gan_last.pt")["trainer"]["optimizer_g"]
    assert optimizer["param_groups"][0]["fused"] is True
    assert optimizer["param_groups"][0]["lr"] == lower
    assert all(float(state["step"]) == 4 for state in optimizer["state"].values())


def test_the_loop_reads_back_from_the_device_only_at_log_and_checkpoint_steps(
    tiny, tmp_path, monkeypatch
):
    """No host synchronisation per step: of a 6-step run logging every 3 steps and saving
    every 4, the code of the loop and its step (attngan.train.gan and attngan.train.run) reads
    tensors back (.item, .tolist, float, int, bool) at steps 3 (the log: one copy of the losses
    and the divergence watch), 4 (the checkpoint's check) and 6 (the end) only."""
    import attngan.train.gan as gan_module
    import attngan.train.run as run_module

    config, damsm = tiny
    loop_files = {gan_module.__file__, run_module.__file__}
    reads, current = [], [0]
    step = GANTrainer.step

    def counted_step(self, batch):
        current[0] = self.steps + 1
        return step(self, batch)

    monkeypatch.setattr(GANTrainer, "step", counted_step)

    def reader(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args):
            if sys._getframe(1).f_code.co_filename in loop_files:
                reads.append((current[0], name))
            return original(self, *args)

        return read

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, reader(name))
    train_gan(
        _with(config, max_steps=6, log_every=3, checkpoint_every=4, sample_every=1000),
        damsm,
        tmp_path / "run",
        progress=False,
    )
    assert {step for step, _ in reads if step > 0} == {3, 4, 6}  # 0: the run's set-up
    assert [name for step, name in reads if step == 3] == ["tolist"]


def test_a_new_run_starts_the_metrics_of_a_run_killed_before_its_checkpoint_afresh(tiny, tmp_path):
    config, damsm = tiny
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "d0": 9.0}\n{"step": 2, "d')
    train_gan(_with(config, max_steps=2), damsm, tmp_path / "run", progress=False)
    fresh = tmp_path / "fresh"
    train_gan(_with(config, max_steps=2), damsm, fresh, progress=False)
    assert _losses(tmp_path / "run") == _losses(fresh)


def test_a_run_records_where_its_data_is_from_anywhere(tiny, tmp_path, monkeypatch):
    """A relative data.root is recorded as the absolute folder it meant, so that evaluating or
    resuming the run from another folder reads the same data (it read another set silently)."""
    config, damsm = tiny
    monkeypatch.chdir(Path(config.data.root).parent)
    relative = dataclasses.replace(
        config, data=dataclasses.replace(config.data, root=Path(config.data.root).name)
    )
    train_gan(_with(relative, max_steps=1), damsm, tmp_path / "run", progress=False)
    monkeypatch.chdir(tmp_path)
    assert load_gan(tmp_path / "run")[3].data.root == str(Path(config.data.root).resolve())
    assert load_config(tmp_path / "run" / "config.yaml").data.root == str(
        Path(config.data.root).resolve()
    )


def test_existing_run_needs_resume_and_resume_needs_a_run(tiny, tmp_path):
    config, damsm = tiny
    with pytest.raises(CheckpointError, match="without --resume"):
        train_gan(_with(config, max_steps=1), damsm, tmp_path / "none", resume=True, progress=False)
    train_gan(_with(config, max_steps=1), damsm, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="--resume"):
        train_gan(_with(config, max_steps=2), damsm, tmp_path / "run", progress=False)


def test_resume_refuses_another_model_and_a_shorter_run(tiny, tmp_path):
    """Before anything is written: a resumed run with another model size failed in
    load_state_dict's words, and one shorter than the run reported a finished run of its
    length."""
    config, damsm = tiny
    run = tmp_path / "run"
    train_gan(_with(config, max_steps=2), damsm, run, progress=False)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"gan\.ngf=4 \(the run's: 8\)"):
        train_gan(_with(config, max_steps=4, ngf=4), damsm, run, resume=True, progress=False)
    with pytest.raises(
        CheckpointError,
        match="has trained 2 steps, more than this config's 1 "
        r"\(gan.epochs=.*raise them to at least 2 steps",
    ):
        train_gan(_with(config, max_steps=1), damsm, run, resume=True, progress=False)
    assert (run / "metrics.jsonl").read_text() == before
    # a finished run resumed with its own length is left as it is (what a second demo does)
    assert (
        train_gan(_with(config, max_steps=2), damsm, run, resume=True, progress=False)["steps"] == 2
    )
    assert (run / "metrics.jsonl").read_text() == before
    with pytest.raises(CheckpointError, match="holds a DAMSM run"):
        train_gan(_with(config, max_steps=1), damsm, damsm, progress=False)


def test_run_settings_that_cannot_run_here_fail_before_the_run_writes(tiny, tmp_path):
    """A device this torch lacks failed in torch's words (or, sampling, called the checkpoint
    corrupt); kernels that cannot run here failed at the first step, after the run folder was
    written."""
    config, damsm = tiny
    for run in (dict(device="mps"), dict(device="meta"), dict(impl="cuda")):
        changed = dataclasses.replace(config, run=dataclasses.replace(config.run, **run))
        with pytest.raises(
            (ValueError, ImplementationUnavailable),
            match="run.device='.*' is not a device this project runs on; use "
            "auto, cpu or cuda|run.impl='cuda' on cpu: .*cannot run here",
        ):
            train_gan(changed, damsm, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def test_damsm_of_another_vocabulary_is_refused(tiny, tmp_path):
    config, damsm = tiny
    payload = load_checkpoint(resolve_damsm_checkpoint(damsm))
    payload["vocab"] = payload["vocab"] + ["zebra"]
    payload["vocab_fingerprint"] = "0123456789abcdef"
    other = save_checkpoint(tmp_path / "other_damsm.pt", payload)
    with pytest.raises(Exception, match="vocabulary") as error:
        train_gan(_with(config, max_steps=1), other, tmp_path / "run", progress=False)
    assert str(other) in str(error.value) and "pretrain" in str(error.value)


@pytest.mark.gpu
def test_gpu_training_steps_never_wait_for_the_gpu(no_gpu_synchronisation):
    """A GAN step and a DAMSM pretraining step on the GPU, fed batches as the data loader gives
    them (CPU tensors), their losses watched for divergence as the loops do: no synchronisation
    with the GPU anywhere (the lengths and caption ids are checked on the CPU, copies are
    queued), which torch's sync debug mode would raise."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    config = preset_config("shapes", cuda)
    trainer, gan_batch = make_trainer(config, cuda), random_batch(config, cpu)
    damsm = DAMSMTrainer(config, VOCAB_SIZE, cuda)
    damsm_batch = random_batch(config, cpu, stage="damsm")
    watches = DivergenceWatch(), DivergenceWatch()  # as the training loops watch the losses

    def steps():
        watches[0].update(trainer.steps + 1, trainer.step(gan_batch))
        watches[1].update(damsm.steps + 1, damsm.step(damsm_batch))

    steps()  # compiles the kernels and builds optimizer state
    with no_gpu_synchronisation():
        steps()
