"""Config: presets load (by path or by name), strict keys and types, dotted overrides, round
trip through YAML."""
from pathlib import Path

import pytest

from attngan.config import (Config, ConfigError, apply_overrides, config_from_dict,
                            config_to_dict, load_config, preset_names, preset_path, save_config)

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
    assert (damsm.gamma1, damsm.gamma2, damsm.gamma3, damsm.lr, damsm.grad_clip) == \
        (4.0, 5.0, 10.0, 0.002, 0.25)
    assert load_config("configs/coco_damsm.yaml").data.words_num == 15


def test_unknown_key_names_it_and_suggests_the_fix():
    with pytest.raises(ConfigError, match=r"unknown config key 'damsm.batchsize'.*batch_size"):
        load_config("configs/shapes.yaml", ["damsm.batchsize=8"])
    with pytest.raises(ConfigError, match="unknown config key 'dmsm'"):
        config_from_dict({"dmsm": {}})


@pytest.mark.parametrize("override, message", [
    ("damsm.batch_size=eight", "must be an integer"),
    ("damsm.batch_size=8.5", "must be an integer"),
    ("damsm.lr=fast", "must be a number"),
    ("data.bbox_crop=3", "must be true or false"),
    ("damsm.betas=0.5", "must be a list"),
    ("data=3", "must be a mapping"),
    ("damsm.batch_size", "must look like section.key=value"),
    ("run.precision=fp16", "must be one of 'fp32', 'bf16', got 'fp16'"),
])
def test_wrong_types_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/shapes.yaml", [override])


def test_overrides_apply_and_config_is_frozen():
    config = load_config("configs/shapes.yaml", ["damsm.batch_size=8", "damsm.lr=1e-3",
                                                 "data.synthetic.colors=[red, blue]",
                                                 "image_encoder.weights=/x/y.pth"])
    assert config.damsm.batch_size == 8 and config.damsm.lr == 1e-3
    assert config.data.synthetic.colors == ("red", "blue")
    assert config.image_encoder.weights == "/x/y.pth"
    with pytest.raises(Exception):
        config.damsm.batch_size = 3


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("damsm: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_presets_by_name_and_outside_a_clone(tmp_path, monkeypatch):
    """A preset's name, or configs/<name>.yaml where there is no such file (outside a clone of
    the repository, after pip install), reads the installed preset; other missing paths, and
    unknown names, are errors that list the presets."""
    assert preset_names() == [path.stem for path in PRESETS]
    assert load_config("configs/birds.yaml") == load_config("birds")
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/shapes.yaml") == load_config("shapes") \
        == load_config(preset_path("shapes"))
    assert load_config("coco.yaml").data.dataset == "coco"
    for wrong in ("configs/bird.yaml", "bird", "other/shapes.yaml"):
        with pytest.raises(ConfigError, match=f"config file {wrong} does not exist and names no "
                           "preset; pass a YAML file, or a preset by name: birds, birds_damsm, "
                           "coco, coco_damsm, shapes"):
            load_config(wrong)


def test_defaults_and_dict_round_trip():
    assert config_from_dict({}) == Config()
    assert config_from_dict(config_to_dict(Config())) == Config()
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
