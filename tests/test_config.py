"""Config: presets load (by path or by name), strict keys and types, dotted overrides, round
trip through YAML."""

import dataclasses
from pathlib import Path

import pytest

from attngan.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    preset_names,
    preset_path,
    save_config,
)

PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_presets_carry_spec_hyperparameters():
    birds, coco = load_config("configs/birds.yaml"), load_config("configs/coco.yaml")
    assert (birds.gan.ngf, birds.gan.ndf, birds.gan.r_num, birds.gan.batch_size) == (32, 64, 2, 20)
    assert (coco.gan.ngf, coco.gan.ndf, coco.gan.r_num, coco.gan.batch_size) == (48, 96, 3, 14)
    assert (birds.gan.lambda_damsm, coco.gan.lambda_damsm) == (5.0, 50.0)
    assert (birds.data.words_num, coco.data.words_num) == (18, 12)
    assert (birds.data.eval_words_num, coco.data.eval_words_num) == (25, 20)
    assert birds.data.image_sizes == (64, 128, 256)
    damsm = load_config("configs/birds_damsm.yaml").damsm
    assert (damsm.gamma1, damsm.gamma2, damsm.gamma3, damsm.lr, damsm.grad_clip) == (
        4.0,
        5.0,
        10.0,
        0.002,
        0.25,
    )
    assert load_config("configs/coco_damsm.yaml").data.words_num == 15


def test_unknown_key_names_it_and_suggests_the_fix():
    with pytest.raises(ConfigError, match=r"unknown config key 'damsm.batchsize'.*batch_size"):
        load_config("configs/shapes.yaml", ["damsm.batchsize=8"])
    with pytest.raises(ConfigError, match="unknown config key 'dmsm'"):
        config_from_dict({"dmsm": {}})


@pytest.mark.parametrize(
    "override, message",
    [
        ("damsm.batch_size=eight", "must be an integer"),
        ("damsm.batch_size=8.5", "must be an integer"),
        ("damsm.lr=fast", "must be a number"),
        ("data.bbox_crop=3", "must be true or false"),
        ("damsm.betas=0.5", "must be a list"),
        ("data=3", "must be a mapping"),
        ("damsm.batch_size", "must look like section.key=value"),
        ("run.precision=fp16", "must be one of 'fp32', 'tf32', 'bf16', got 'fp16'"),
    ],
)
def test_wrong_types_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/shapes.yaml", [override])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "damsm.betas=[0.5]",
            "'damsm.betas' must be two numbers in [0, 1), like [0.5, 0.999], got (0.5,)",
        ),
        ("gan.betas=[0.5, 1.0]", "'gan.betas' must be two numbers in [0, 1)"),
        ("damsm.checkpoint_every=0", "'damsm.checkpoint_every' must be at least 1, got 0"),
        ("gan.sample_every=0", "'gan.sample_every' must be at least 1, got 0"),
        ("damsm.epochs=0", "'damsm.epochs' must be at least 1, got 0"),
        ("gan.epochs=-3", "'gan.epochs' must be at least 1, got -3"),
        ("gan.max_steps=-1", "'gan.max_steps' must be 0 (every epoch) or more, got -1"),
        ("data.branch_num=0", "'data.branch_num' must be at least 1, got 0"),
        ("data.captions_per_image=0", "'data.captions_per_image' must be at least 1, got 0"),
        ("damsm.eval_candidates=1", "'damsm.eval_candidates' must be at least 2, got 1"),
        ("damsm.gamma1=-1", "'damsm.gamma1' must be a finite number above 0, got -1.0"),
        ("damsm.gamma2=.nan", "'damsm.gamma2' must be a finite number above 0, got nan"),
        ("gan.lr_d=0", "'gan.lr_d' must be a finite number above 0, got 0.0"),
        ("damsm.batch_size=1", "'damsm.batch_size' must be at least 2, got 1"),
        ("text_encoder.dropout=1", "'text_encoder.dropout' must be in [0, 1), got 1.0"),
        ("run.seed=-1", r"'run.seed' must be in [0, 4294967295], got -1"),
        ("run.threads=-1", "'run.threads' must be 0 (torch's default) or more, got -1"),
        (
            "run.impl=fast",
            "'run.impl' must be one of auto, loop, reference, cpp, triton, cuda, got 'fast'",
        ),
        (
            "data.num_workers=-1",
            "'data.num_workers' must be 'auto' (the machine's cores) or 0 or more, got -1",
        ),
    ],
)
def test_values_out_of_range_are_errors_naming_the_key(override, message):
    """Caught when the config is built, before data or models: these failed later in torch's
    words (modulo by zero, Adam's index error) or ran silently wrong (no epoch trained)."""
    with pytest.raises(ConfigError) as caught:
        load_config("configs/shapes.yaml", [override])
    assert str(caught.value).startswith(f"config key {message}")


def test_overrides_apply_and_config_is_frozen():
    config = load_config(
        "configs/shapes.yaml",
        [
            "damsm.batch_size=8",
            "damsm.lr=1e-3",
            "data.synthetic.colors=[red, blue]",
            "image_encoder.weights=/x/y.pth",
        ],
    )
    assert config.damsm.batch_size == 8 and config.damsm.lr == 1e-3
    assert config.data.synthetic.colors == ("red", "blue")
    assert config.image_encoder.weights == "/x/y.pth"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.damsm.batch_size = 3


def test_missing_file_and_bad_yaml(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("damsm: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe d\x00a\x00")
    with pytest.raises(ConfigError, match=f"config file {bad} is not UTF-8 text"):
        load_config(bad)
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder"):
        load_config(tmp_path)
    (tmp_path / "shapes").mkdir()  # a folder named like a preset: the preset
    monkeypatch.chdir(tmp_path)
    assert load_config("shapes").data.dataset == "shapes"


def test_presets_by_name_and_outside_a_clone(tmp_path, monkeypatch):
    """A preset's name, or configs/<name>.yaml where there is no such file (outside a clone of
    the repository, after pip install), reads the installed preset; other missing paths, and
    unknown names, are errors that list the presets."""
    assert preset_names() == [path.stem for path in PRESETS]
    assert load_config("configs/birds.yaml") == load_config("birds")
    monkeypatch.chdir(tmp_path)
    assert (
        load_config("configs/shapes.yaml")
        == load_config("shapes")
        == load_config(preset_path("shapes"))
    )
    assert load_config("coco.yaml").data.dataset == "coco"
    for wrong in ("configs/bird.yaml", "bird", "other/shapes.yaml"):
        with pytest.raises(
            ConfigError,
            match=f"config file {wrong} does not exist and names no "
            "preset; pass a YAML file, or a preset by name: birds, birds_damsm, "
            "coco, coco_damsm, shapes",
        ):
            load_config(wrong)


def test_defaults_and_dict_round_trip():
    assert config_from_dict({}) == Config()
    assert config_from_dict(config_to_dict(Config())) == Config()
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
