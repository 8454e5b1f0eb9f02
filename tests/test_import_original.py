"""Importing the original's released DAMSM encoders and generator
(attngan/train/import_original.py): files in the original's layout (plain state dicts, its
module names, the Inception trunk at the top level, no BatchNorm counters, PyTorch's legacy
serialization) become runs whose networks are exactly the files', with the original's resize;
every wrong input is one clear error. (The released files cannot be fetched here; the layout
comes from the original's model.py.)"""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from test_gan_training import TINY, make_tiny_run, single_thread  # noqa: F401 (autouse)

from attngan.cli import main as cli_main
from attngan.config import ConfigError, load_config
from attngan.data.dataset import read_split
from attngan.data.errors import DataError
from attngan.data.synthetic import make_synthetic
from attngan.files import file_sha256
from attngan.metrics.evaluate import evaluate_generator
from attngan.nn.generator import Generator
from attngan.nn.image_encoder import _resize, build_image_encoder
from attngan.nn.text_encoder import TextEncoder
from attngan.train.checkpoint import CheckpointError, load_checkpoint
from attngan.train.damsm import load_damsm, pretrain_damsm, resolve_damsm_checkpoint
from attngan.train.gan import generate, load_gan, train_gan
from attngan.train.import_original import import_damsm, import_generator, original_generator_name

INCEPTION = [
    "image_encoder.backbone=inception",
    "image_encoder.input_size=75",
    "damsm.eval_candidates=4",
    "damsm.eval_folds=2",
]


def _original_files(folder, config, vocab_size):
    """A random text encoder and Inception image encoder saved as the original saved them;
    returns (text path, image path, text encoder, image encoder)."""
    torch.manual_seed(3)
    text = TextEncoder(vocab_size, config.text_encoder).eval()
    image = build_image_encoder(
        dataclasses.replace(config.image_encoder, random_init=True), config.text_encoder.hidden_dim
    ).eval()
    image_state = {
        key.removeprefix("trunk."): value
        for key, value in image.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    text_path, image_path = folder / "text_encoder200.pth", folder / "image_encoder200.pth"
    torch.save(text.state_dict(), text_path, _use_new_zipfile_serialization=False)
    torch.save(image_state, image_path, _use_new_zipfile_serialization=False)
    return text_path, image_path, text, image


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    config = load_config("configs/shapes.yaml", [f"data.root={root / 'data'}", *TINY, *INCEPTION])
    make_synthetic(root / "data", config.data.synthetic)
    vocab = read_split(config.data, "train").vocab  # writes captions.pickle
    return (root, config, vocab, *_original_files(root, config, len(vocab)))


def test_imported_run_holds_the_original_encoders(released, tmp_path):
    _, config, vocab, text_path, image_path, text, image = released
    out = tmp_path / "run"
    results = import_damsm(text_path, image_path, config, out, r_precision=True)
    payload = load_checkpoint(resolve_damsm_checkpoint(out), kind="damsm")
    assert (
        payload["imported"]
        == results["imported"]
        == {
            "text_encoder": str(text_path),
            "text_encoder_sha256": file_sha256(text_path),
            "image_encoder": str(image_path),
            "image_encoder_sha256": file_sha256(image_path),
        }
    )
    loaded_text, loaded_image, loaded_vocab, loaded_config = load_damsm(out, expected_vocab=vocab)
    assert loaded_vocab.fingerprint() == vocab.fingerprint()
    assert loaded_config.image_encoder.align_corners and loaded_image.align_corners
    for source, loaded in ((text, loaded_text), (image, loaded_image)):
        got = loaded.state_dict()
        for key, value in source.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(got[key], value), key
    captions = torch.randint(1, len(vocab), (3, 6))
    lengths = torch.tensor([6, 2, 4])
    with torch.no_grad():
        for a, b in zip(text(captions, lengths), loaded_text(captions, lengths)):
            assert torch.equal(a, b)
        images = torch.rand(2, 3, 32, 32) * 2 - 1
        image.align_corners = True  # the original's resize
        for a, b in zip(image(images), loaded_image(images)):
            assert torch.equal(a, b)
    for level in ("sentence", "word"):
        assert 0.0 <= results[level]["mean"] <= 1.0 and results[level]["n"] == 12
    assert json.loads((out / "r_precision.json").read_text()) == json.loads(json.dumps(results))
    assert (out / "config.yaml").is_file()
    with pytest.raises(CheckpointError, match="already holds a DAMSM run"):
        import_damsm(text_path, image_path, config, out)
    untrained = dataclasses.replace(
        config, image_encoder=dataclasses.replace(config.image_encoder, random_init=True)
    )
    with pytest.raises(
        CheckpointError, match="imported from the original .* without optimizer state to resume"
    ):
        pretrain_damsm(untrained, out, resume=True, progress=False)


def test_align_corners_only_when_enlarging():
    small, large = torch.rand(1, 3, 20, 20), torch.rand(1, 3, 120, 120)
    assert torch.equal(
        _resize(small, 75, align_corners=True),
        F.interpolate(small, size=(75, 75), mode="bilinear", align_corners=True),
    )
    assert not torch.equal(_resize(small, 75, align_corners=True), _resize(small, 75))
    assert torch.equal(_resize(large, 75, align_corners=True), _resize(large, 75))
    small_config = load_config("configs/shapes.yaml", ["image_encoder.align_corners=true"])
    with pytest.raises(ConfigError, match="align_corners is only read by the inception"):
        build_image_encoder(small_config.image_encoder, 16)


def test_import_errors(released, tmp_path):
    root, config, vocab, text_path, image_path, _, _ = released
    out = tmp_path / "run"
    with pytest.raises(
        CheckpointError,
        match=r"does not exist; pass the original's released "
        r"text encoder",
    ):
        import_damsm(tmp_path / "none.pth", image_path, config, out)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a pytorch file" * 10)
    with pytest.raises(CheckpointError, match="image encoder file .* could not be read"):
        import_damsm(text_path, corrupt, config, out)
    with pytest.raises(
        CheckpointError,
        match=r"image encoder file .* is not the original's "
        r"image encoder: .*missing keys",
    ):
        import_damsm(text_path, text_path, config, out)  # the files swapped
    other_words = tmp_path / "other_vocab.pth"
    state = torch.load(text_path, weights_only=True)
    state["encoder.weight"] = torch.zeros(len(vocab) + 5, state["encoder.weight"].shape[1])
    torch.save(state, other_words)
    with pytest.raises(
        CheckpointError,
        match=rf"embeds {len(vocab) + 5} words, but .* holds "
        rf"{len(vocab)}: use the captions.pickle",
    ):
        import_damsm(other_words, image_path, config, out)
    wider = load_config(
        "configs/shapes.yaml",
        [f"data.root={root / 'data'}", *TINY, *INCEPTION, "text_encoder.hidden_dim=32"],
    )
    with pytest.raises(CheckpointError, match="keys of the wrong shape.*set text_encoder"):
        import_damsm(text_path, image_path, wider, out)
    small = load_config("configs/shapes.yaml", [f"data.root={root / 'data'}", *TINY])
    with pytest.raises(ConfigError, match="released image encoders are Inception-v3"):
        import_damsm(text_path, image_path, small, out)
    empty = dataclasses.replace(
        config, data=dataclasses.replace(config.data, root=str(tmp_path / "nodata"))
    )
    with pytest.raises(DataError, match="captions.pickle does not exist: the released encoders"):
        import_damsm(text_path, image_path, empty, out)
    assert not out.exists()  # nothing written by a failure


def test_cli_import_damsm(released, tmp_path, capsys):
    root, _, _, text_path, image_path, _, _ = released
    out = tmp_path / "cli_run"
    argv = [
        "import-damsm",
        "--config",
        "configs/shapes.yaml",
        "--text-encoder",
        str(text_path),
        "--image-encoder",
        str(image_path),
        "--out",
        str(out),
    ]
    for override in [f"data.root={root / 'data'}", *TINY, *INCEPTION]:
        argv += ["--set", override]
    assert cli_main(argv) == 0
    assert f"run folder: {out}" in capsys.readouterr().out
    assert resolve_damsm_checkpoint(out).is_file()
    assert cli_main(argv) == 2  # the run exists: refused
    assert "already holds a DAMSM run" in capsys.readouterr().err


# ---------------------------------------------------------------- the generator


def _original_generator_file(path, netG):
    """`netG`'s weights as the original saved its G_NET: its names, the word projection as a
    1x1 Conv2d, no BatchNorm counters, legacy serialization."""
    state = {}
    for key, value in netG.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        name = original_generator_name(key)
        state[name] = value.unsqueeze(-1) if name.endswith("conv_context.weight") else value
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return state


@pytest.fixture(scope="module")
def tiny_damsm(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("generator"))


def test_imported_generator_samples_and_evaluates(tiny_damsm, tmp_path):
    config, damsm = tiny_damsm
    torch.manual_seed(4)
    source = Generator.from_config(config, config.text_encoder.hidden_dim).eval()
    state = _original_generator_file(tmp_path / "netG_epoch_600.pth", source)
    assert {
        "ca_net.fc.weight",
        "h_net1.fc.0.weight",
        "h_net1.upsample2.2.running_var",
        "h_net2.att.conv_context.weight",
        "h_net2.residual.0.block.3.weight",
        "h_net2.upsample.1.weight",
        "img_net2.img.0.weight",
    } <= set(state)
    out = tmp_path / "gan"
    results = import_generator(tmp_path / "netG_epoch_600.pth", damsm, config, out)
    assert results["imported"]["generator_sha256"] == file_sha256(tmp_path / "netG_epoch_600.pth")
    netG, text_encoder, vocab, _, payload = load_gan(out)
    assert payload["imported"] == results["imported"]
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(netG.state_dict()[key], value), key
    captions, lengths = torch.randint(1, len(vocab), (2, 5)), torch.tensor([5, 3])
    noise = torch.randn(2, netG.z_dim)
    expected = generate(source, text_encoder, captions, lengths, noise, seed=0)[0]
    for a, b in zip(expected, generate(netG, text_encoder, captions, lengths, noise, seed=0)[0]):
        assert torch.equal(a, b)
    result = evaluate_generator(out, samples=8)
    assert result["protocol"]["checkpoint_step"] == 0 and 0 <= result["r_precision"]["mean"] <= 1
    with pytest.raises(CheckpointError, match="already holds a GAN run"):
        import_generator(tmp_path / "netG_epoch_600.pth", damsm, config, out)
    with pytest.raises(
        CheckpointError, match="imported from the original .* without discriminators"
    ):
        train_gan(config, damsm, out, resume=True, progress=False)


def test_generator_import_errors(tiny_damsm, tmp_path):
    config, damsm = tiny_damsm
    source = Generator.from_config(config, config.text_encoder.hidden_dim)
    path = tmp_path / "netG.pth"
    _original_generator_file(path, source)
    three = load_config(
        "configs/shapes.yaml", [f"data.root={config.data.root}", *TINY, "data.branch_num=3"]
    )
    with pytest.raises(
        CheckpointError,
        match=r"generator file .* missing keys \(first: "
        r"h_net3.*set gan.ngf, gan.r_num and "
        r"data.branch_num",
    ):
        import_generator(path, damsm, three, tmp_path / "a")
    wider = load_config(
        "configs/shapes.yaml", [f"data.root={config.data.root}", *TINY, "gan.ngf=16"]
    )
    with pytest.raises(CheckpointError, match="keys of the wrong shape"):
        import_generator(path, damsm, wider, tmp_path / "b")
    text_file = tmp_path / "text_encoder.pth"
    torch.save(TextEncoder(10, config.text_encoder).state_dict(), text_file)
    with pytest.raises(CheckpointError, match="unexpected keys .*encoder.weight"):
        import_generator(text_file, damsm, config, tmp_path / "c")
    with pytest.raises(CheckpointError, match="does not exist"):
        import_generator(path, tmp_path / "no_damsm", config, tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")
