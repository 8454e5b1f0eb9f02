"""bench/tune_damsm_tiles.py: the sweep runs, restores kernels.damsm.TILES, and every tiling of
the Triton DAMSM kernels (region blocks, captions per program, warps, stages) gives the same
similarities and gradients (here under the interpreter at a tiny size; compiled on a GPU
machine); its suggestion reaches bench_damsm.py through the tiles file. One caption per program
is checked against fp64 in tests/test_damsm_kernels.py."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import tune_damsm_tiles as tune  # noqa: E402
from common import load_tiles, save_tiles  # noqa: E402

from attngan.kernels import damsm as tk  # noqa: E402

TINY = dict(batch=3, dim=16, words=5, regions=40)


def test_every_tiling_agrees_and_tiles_are_restored():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    before = dict(tk.TILES)
    # BLOCK_R 16 / 32 / 64 over 40 regions: one, two and three region blocks; 2 and 4 captions
    # per program over 3 captions: a group with a caption past the last
    configs = [(16, 1, 4, 1), (32, 1, 4, 2), (64, 1, 8, 2), (16, 2, 4, 2), (32, 4, 8, 2)]
    rows = tune.sweep(
        tune.KERNELS,
        {kernel: configs for kernel in tune.KERNELS},
        device,
        torch.float32,
        TINY,
        max_seconds=600,
        min_run_time=0.01,
    )
    assert tk.TILES == before
    for kernel in tune.KERNELS:
        tried = [r for r in rows if r["kernel"] == kernel]
        assert sum(r["current"] for r in tried) == 1
        assert {r["config"] for r in tried} >= set(configs) - {before[kernel][1]}
        for row in tried:
            assert "error" not in row, row
            assert row["difference"] < 1e-5, row  # fp32: only the summation order differs
        assert tune.best(rows, kernel) is not None


def _row(kernel: str, config: tuple, current: bool = False, **timing) -> dict:
    """One row of a sweep: `kernel` run with tiles `config` (the current tiles or a candidate),
    its time, speed-up over the current tiles and largest difference from their outputs."""
    return dict(kernel=kernel, config=config, current=current, **timing)


def test_render_suggests_an_entry_per_kernel():
    rows = [
        _row("words", (16, 1, 8, 2), ms=2.0, vs_current=1.0, difference=0.0, current=True),
        _row("words", (32, 2, 8, 2), ms=1.0, vs_current=2.0, difference=1e-4),
        _row("words", (64, 1, 8, 2), ms=0.5, vs_current=4.0, difference=0.5),
    ]
    info = dict(
        device="cuda",
        date_utc="2026-11-27 20:00",
        gpu="test GPU",
        versions={},
        commit="x",
        uncommitted_changes=False,
    )
    text = tune.render(rows, info, torch.bfloat16)
    assert "MISMATCH" in text  # the wrong candidate is flagged ...
    assert "words: (32, 2, 8, 2) (2.00x the current" in text  # ... and never suggested


def test_suggested_tiles_round_trip_through_the_tiles_file(tmp_path):
    """tune_damsm_tiles.py --write-tiles writes TILES with the fastest agreeing candidate in the
    swept dtype's slot; bench_damsm.py --tiles reads it back as TILES holds it, and a wrong file
    is one clear error."""
    rows = [
        _row("words", (16, 1, 8, 2), ms=2.0, vs_current=1.0, difference=0.0, current=True),
        _row("words", (32, 2, 8, 2), ms=1.0, vs_current=2.0, difference=1e-4),
        _row("forward", (64, 1, 8, 2), ms=0.1, vs_current=9.0, difference=0.5),
    ]  # fastest, but its outputs disagree
    tiles = tune.tuned_tiles(rows, torch.bfloat16)
    assert tiles["words"] == ((32, 2, 8, 2), tk.TILES["words"][1])  # bf16 slot only
    assert tiles["forward"] == tk.TILES["forward"] and tiles["regions"] == tk.TILES["regions"]
    path = tmp_path / "tiles.json"
    save_tiles(tiles, path)
    assert load_tiles(path, list(tk.TILES)) == tiles
    with pytest.raises(ValueError, match="needs exactly the kernels"):
        load_tiles(path, ["forward"])
    path.write_text('{"forward": [[32, 1, 8], [16, 1, 8, 1]], "regions": [], "words": []}')
    with pytest.raises(ValueError, match="'forward' must be two entries"):
        load_tiles(path, list(tk.TILES))
    with pytest.raises(ValueError, match="write one with bench/tune_damsm_tiles.py"):
        load_tiles(tmp_path / "missing.json", list(tk.TILES))
