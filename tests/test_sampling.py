"""Sampling (attngan/sampling.py) and figures (attngan/viz.py): files per stage and caption,
an attention figure with the chosen words, clear errors for unknown words and missing devices."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_gan_training import single_thread, train_tiny_gan  # noqa: F401 (autouse)

from attngan import viz
from attngan.cli import main
from attngan.data.errors import DataError
from attngan.metrics.evaluate import evaluate_generator
from attngan.sampling import sample_captions
from attngan.viz import attention_figure, colormap, save_image_grid, word_confidence


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    gan, damsm = train_tiny_gan(tmp_path_factory.mktemp("sampling"))
    return gan


def test_samples_and_attention_figure_are_written(checkpoint, tmp_path):
    texts = ["there is a small red circle on the top left", "a big blue square in the middle"]
    paths = sample_captions(checkpoint, texts, n=3, out_dir=tmp_path, seed=1)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "00_there_is_a_small_red_circle_on_the_top_stage1_16px.png",
            "00_there_is_a_small_red_circle_on_the_top_stage2_32px.png",
            "00_there_is_a_small_red_circle_on_the_top_attention.png",
            "01_a_big_blue_square_in_the_middle_stage1_16px.png",
            "01_a_big_blue_square_in_the_middle_stage2_32px.png",
            "01_a_big_blue_square_in_the_middle_attention.png",
            "captions.txt",
        ]
    )
    grid = Image.open(tmp_path / "00_there_is_a_small_red_circle_on_the_top_stage2_32px.png")
    assert grid.size == (3 * (128 + 2) + 2, 128 + 4)  # 3 samples, 4x enlarged
    figure = Image.open(tmp_path / "00_there_is_a_small_red_circle_on_the_top_attention.png")
    assert figure.size[0] == 6 * (128 + 2) + 2  # image + 5 words
    again = sample_captions(checkpoint, texts[:1], n=3, out_dir=tmp_path / "again", seed=1)
    assert np.array_equal(np.asarray(Image.open(again[1])), np.asarray(Image.open(paths[1])))


def test_unknown_word_is_named(checkpoint, tmp_path):
    with pytest.raises(DataError, match="'zebra'"):
        sample_captions(checkpoint, ["a red zebra"], out_dir=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_device_auto_by_default_and_a_missing_gpu_is_one_error(checkpoint, tmp_path, capsys):
    """Sampling and evaluation take the GPU when there is one (device "auto", as training); one
    asked for where there is none is one error naming the fix, from the API and the CLI."""
    with pytest.raises(
        ValueError,
        match=r"device='cuda' but no CUDA device is available; use "
        r"device='cpu' \(--device cpu\)",
    ):
        sample_captions(checkpoint, ["a red circle"], out_dir=tmp_path, device="cuda")
    with pytest.raises(
        ValueError, match="device='gpu' is not a device this project runs on; use auto, cpu or cuda"
    ):
        evaluate_generator(checkpoint, samples=4, device="gpu")
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(checkpoint),
                "--text",
                "a red circle",
                "--n",
                "1",
                "--out",
                str(tmp_path / "auto"),
            ]
        )
        == 0
    )  # auto: the CPU here
    assert main(["evaluate", "--ckpt", str(checkpoint), "--device", "cuda:0"]) == 2
    assert "no CUDA device is available; use device='cpu' (--device cpu)" in capsys.readouterr().err


def test_bad_captions_files_and_output_folders_are_one_error(checkpoint, tmp_path, capsys):
    def error(*arguments):
        assert main(["sample", "--ckpt", str(checkpoint), "--n", "1", *arguments]) == 2
        return capsys.readouterr().err

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a red circle caf\xe9\n".encode("latin1"))
    assert (
        f"captions file {latin1} is not UTF-8 text (invalid continuation byte at byte 16); "
        "save it as UTF-8" in error("--captions", str(latin1))
    )
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert f"captions file {blank} has no captions; write one caption per line" in error(
        "--captions", str(blank)
    )
    assert f"captions file {tmp_path} does not exist or is not a file" in error(
        "--captions", str(tmp_path)
    )
    assert f"{blank} is a file, not a folder; pass another output folder (--out)" in error(
        "--text", "a red circle", "--out", str(blank)
    )
    assert f"cannot make the folder {blank / 'under'} (Not a directory)" in error(
        "--text", "a red circle", "--out", str(blank / "under")
    )


def test_sampling_keeps_what_it_did_not_write_and_bounds_its_batch(checkpoint, tmp_path, capsys):
    """The default --out, samples/, run in a training run's folder replaced the key to its
    sample grids; --n 100000 tried to draw every image in one batch (14 GB and counting)."""
    grids = tmp_path / "samples"
    grids.mkdir()
    (grids / "captions.txt").write_text("column 0: a red circle\n")
    with pytest.raises(ValueError, match="captions.txt was not written by `attngan sample`"):
        sample_captions(checkpoint, ["a red circle"], n=1, out_dir=grids)
    assert (grids / "captions.txt").read_text() == "column 0: a red circle\n"
    with pytest.raises(ValueError, match="n=65: ask for 1 to 64 samples per caption"):
        sample_captions(checkpoint, ["a red circle"], n=65, out_dir=tmp_path / "many")
    ours = tmp_path / "ours"
    sample_captions(checkpoint, ["a red\ncircle", "a blue square"], n=1, out_dir=ours)
    sample_captions(checkpoint, ["a red circle"], n=1, out_dir=ours)  # its own: replaced
    assert (ours / "captions.txt").read_text() == "00: a red circle\n"
    for seed in ("18446744073709551615", "-1"):  # overflowed when a caption's index was added
        with pytest.raises(SystemExit):
            main(["sample", "--ckpt", str(checkpoint), "--seed", seed])
        assert f"{seed} is not a seed from 0 to 2^62" in capsys.readouterr().err


def test_an_interrupted_command_says_how_to_go_on(checkpoint, monkeypatch, tmp_path, capsys):
    """Ctrl-C ends in one line, which says whether --resume can go on (a checkpoint was
    written) or the run starts over (none yet)."""

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("attngan.cli._train", interrupted)
    assert main(["train", "--damsm", "d", "--out", str(tmp_path / "new")]) == 130
    assert capsys.readouterr().err == (
        "attngan train: interrupted; the run wrote no checkpoint "
        "yet: the same command (without --resume) starts it "
        "again\n"
    )
    assert main(["train", "--damsm", "d", "--out", str(checkpoint)]) == 130
    assert capsys.readouterr().err == (
        "attngan train: interrupted; the same command with "
        "--resume goes on from the run's last checkpoint\n"
    )


def test_word_confidence_counts_mass_above_four_times_uniform():
    """As the original's sampler: 2 words, 16 regions; only values above 4/2 = 2 could count,
    so with attention (at most 1) nothing does; with 8 words the bar is 0.5: word 0 owns region
    0, word 1 takes 0.6 of regions 1-4, 0.5 exactly (word 2, regions 5-8) does not count."""
    assert torch.count_nonzero(word_confidence(torch.softmax(torch.randn(2, 4, 4), 0), 2)) == 0
    attn = torch.full((8, 16), 1 / 8)  # [L, R]
    attn[:, 0] = torch.eye(8)[0]
    attn[:, 1:5] = torch.tensor([0.0, 0.6, 0.4, 0, 0, 0, 0, 0])[:, None]
    attn[:, 5:9] = torch.tensor([0.0, 0.0, 0.5, 0.5, 0, 0, 0, 0])[:, None]
    confidence = word_confidence(attn.view(8, 4, 4), 8)
    torch.testing.assert_close(confidence, torch.tensor([1.0, 2.4, 0, 0, 0, 0, 0, 0]))


def test_attention_figure_shows_all_words_of_a_short_caption(tmp_path):
    images = [torch.zeros(3, 8, 8), torch.zeros(3, 16, 16), torch.zeros(3, 32, 32)]
    maps = [torch.softmax(torch.randn(6, 8, 8), 0), torch.softmax(torch.randn(6, 16, 16), 0)]
    path = attention_figure(images, maps, ["a", "red", "circle"], tmp_path / "f.png", tile_size=40)
    assert Image.open(path).size == (4 * 42 + 2, 2 * (40 + 14 + 2) + 2)
    with pytest.raises(ValueError, match="branch_num"):
        attention_figure(images[:1], [], ["a"], tmp_path / "g.png")


def test_attention_figure_shows_the_most_confident_words_first(tmp_path, monkeypatch):
    labels = []
    real_tile = viz._tile
    monkeypatch.setattr(
        viz,
        "_tile",
        lambda image, label, font: (labels.append(label), real_tile(image, label, font))[1],
    )
    attn = torch.full((6, 4, 4), 0.01)
    attn[5, :3] = attn[4, 3] = attn[1, 0, 0] = 1.0  # masses 12, 4, 1: word 5 > 4 > 1
    images = [torch.zeros(3, 4, 4), torch.zeros(3, 8, 8)]
    attention_figure(images, [attn], list("abcdef"), tmp_path / "f.png", top_k=3, tile_size=8)
    assert labels == ["stage 2", "f", "e", "b"]
    labels.clear()  # ties (no mass above 4/n): the later word first
    attention_figure(
        images,
        [torch.full((6, 4, 4), 1 / 6)],
        list("abcdef"),
        tmp_path / "g.png",
        top_k=3,
        tile_size=8,
    )
    assert labels == ["stage 2", "f", "e", "d"]


def test_attention_figure_shows_maps_zero_up_to_twice_uniform(tmp_path, monkeypatch):
    """As the original's sampler: a map's values up to 2/n are set to 0 before it is drawn, so
    a word below that everywhere gets a flat tile, and only the regions above it show."""
    tiles = {}
    real_tile = viz._tile
    monkeypatch.setattr(
        viz,
        "_tile",
        lambda image, label, font: (tiles.__setitem__(label, image), real_tile(image, label, font))[
            1
        ],
    )
    attn = torch.full((2, 4, 4), 0.5)
    attn[0, 0, 0], attn[1, 0, 0] = 0.9, 0.1  # 2 words: nothing is above 2/2 = 1
    images = [torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)]
    attention_figure(images, [attn], ["a", "b"], tmp_path / "f.png", tile_size=4)
    assert (tiles["a"] == tiles["a"][0, 0]).all() and (tiles["b"] == tiles["b"][0, 0]).all()
    attn = torch.full((4, 4, 4), 0.25)
    attn[0, :2], attn[1, :2] = 0.75, 0.0  # word "a" above 2/4 in the top half only
    attention_figure(images, [attn], list("abcd"), tmp_path / "g.png", tile_size=4)
    assert (tiles["b"] == tiles["b"][0, 0]).all()  # 0.25 everywhere but 0 on top: all <= 2/4
    assert not (tiles["a"] == tiles["a"][0, 0]).all()


def test_colormap_and_grid():
    colours = colormap(np.array([0.0, 0.5, 1.0]))
    assert colours.dtype == np.uint8 and colours.shape == (3, 3)
    assert colours[0, 2] > colours[0, 0] and colours[2, 0] > colours[2, 2]  # blue low, red high
    assert colours[1, 1] == 255  # green in the middle


def test_save_image_grid_values(tmp_path):
    images = torch.stack([torch.full((3, 4, 4), -1.0), torch.full((3, 4, 4), 1.0)])
    path = save_image_grid(images, tmp_path / "g.png", nrow=2)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (8, 14, 3)
    assert pixels[2, 2].tolist() == [0, 0, 0] and pixels[2, 8].tolist() == [255, 255, 255]
