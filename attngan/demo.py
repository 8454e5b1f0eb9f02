"""`make demo` / `attngan demo`: the whole pipeline on the built-in synthetic shapes set.

Steps, each in a sub-folder of the output folder: the data set (data/shapes), DAMSM
pretraining with its R-precision (damsm/), AttnGAN training (gan/), samples with attention
figures for a few fixed captions (samples/), the evaluation of the generator (evaluation.json),
and report.md linking them. Sized by configs/shapes.yaml to finish in 5 to 8 minutes on a
2-core CPU (docs/RESULTS.md); `quick=True` shrinks everything to a smoke test of a minute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from attngan.config import config_to_dict, load_config, preset_path
from attngan.files import hold_folder, write_text_atomically

PRESET = preset_path("shapes")
DEMO_CAPTIONS = (
    "a small red circle at the top left",
    "there is a big blue square in the center",
    "the image shows one large yellow triangle on the bottom right",
    "a tiny green square on the left",
)
EVALUATION_IMAGES = 500  # the preset's 500 test images once each, with one of their captions
QUICK_OVERRIDES = (
    "data.synthetic.num_train=240",
    "data.synthetic.num_test=120",
    "damsm.batch_size=24",
    "damsm.epochs=1",
    "damsm.eval_candidates=20",
    "damsm.eval_folds=2",
    "gan.batch_size=8",
    "gan.max_steps=4",
    "gan.sample_every=2",
    "gan.checkpoint_every=2",
    "gan.log_every=1",
)


def _format_r_precision(result: dict) -> str:
    return (
        f"{100 * result['mean']:.2f} ± {100 * result['std']:.2f} % "
        f"(1 true caption vs {result['candidates'] - 1} others, chance "
        f"{100 / result['candidates']:.0f} %, {result['n']} images, "
        f"{result['num_folds']} folds)"
    )


def _format_checker(checker: dict) -> str:
    """The shapes checker's headline attributes, true captions (shuffled captions)."""
    names = {
        "color": "colour",
        "position": "position",
        "size": "size",
        "shape": "shape",
        "all": "all four",
    }
    return ", ".join(
        f"{label} {checker['true'][key]:.3f} ({checker['shuffled'][key]:.3f})"
        for key, label in names.items()
    )


def run_demo(out: Path, overrides: Sequence[str] = (), quick: bool = False) -> dict:
    """Run every step into `out` (held for the whole demo); returns the collected results
    (also in report.md)."""
    with hold_folder(out, "--out folder", "attngan demo"):
        return _run_demo(Path(out), overrides, quick)


def _run_demo(out: Path, overrides: Sequence[str], quick: bool) -> dict:
    """run_demo once `out` is held."""
    from attngan.data.synthetic import make_synthetic
    from attngan.metrics.evaluate import evaluate_generator
    from attngan.sampling import sample_captions
    from attngan.train.checkpoint import (
        CHECKPOINT_NAMES,
        CheckpointError,
        config_changes,
        load_checkpoint,
    )
    from attngan.train.damsm import pretrain_damsm
    from attngan.train.gan import train_gan

    data_root = out / "data" / "shapes"
    settings = [*(QUICK_OVERRIDES if quick else ()), f"data.root={data_root}", *overrides]
    config = load_config(PRESET, settings)
    timings: dict[str, float] = {}

    def timed(name, function, *args, **kwargs):
        print(f"[demo] {name} ...", flush=True)
        started = time.time()
        result = function(*args, **kwargs)
        timings[name] = round(time.time() - started, 1)
        print(f"[demo] {name} done in {timings[name]:.0f} s", flush=True)
        return result

    # A run whose checkpoint is there is continued (a finished one is kept), when it was made
    # with these settings: an earlier demo into the same folder, stopped or finished.
    checkpoints = {
        kind: out / kind / "checkpoints" / CHECKPOINT_NAMES[kind] for kind in ("damsm", "gan")
    }
    for kind, path in checkpoints.items():
        if path.exists():
            changes = config_changes(load_checkpoint(path, kind=kind), config_to_dict(config))
            if changes:
                raise CheckpointError(
                    f"{out} holds a demo run with other settings ({kind}: "
                    f"{changes}); choose another --out folder, or delete "
                    f"{out} (its data set too) to start again"
                )
    if not (data_root / "captions.pickle").exists() and not (data_root / "text").exists():
        timed("synthetic data", make_synthetic, data_root, config.data.synthetic)
    damsm = timed(
        "DAMSM pretraining",
        pretrain_damsm,
        config,
        out / "damsm",
        resume=checkpoints["damsm"].exists(),
    )
    print(f"[demo] DAMSM R-precision: {_format_r_precision(damsm['sentence'])}")
    gan = timed(
        "GAN training",
        train_gan,
        config,
        out / "damsm",
        out / "gan",
        resume=checkpoints["gan"].exists(),
    )
    samples = timed(
        "sampling",
        sample_captions,
        out / "gan",
        list(DEMO_CAPTIONS),
        n=4,
        out_dir=out / "samples",
        device=config.run.device,
        seed=config.run.seed,
    )
    evaluation = timed(
        "evaluation",
        evaluate_generator,
        out / "gan",
        out_path=out / "evaluation.json",
        device=config.run.device,
        seed=config.run.seed,
        samples=EVALUATION_IMAGES,
    )
    print(
        f"[demo] shapes checker on generated images, their own captions (shuffled captions): "
        f"{_format_checker(evaluation['checker'])}"
    )
    print(
        f"[demo] R-precision of generated images: {_format_r_precision(evaluation['r_precision'])}"
    )
    results = {
        "damsm": damsm,
        "gan": gan,
        "evaluation": evaluation,
        "samples": [str(p) for p in samples],
        "seconds": timings,
    }
    write_text_atomically(out / "report.md", _report(out, results))
    write_text_atomically(out / "results.json", json.dumps(results, indent=2, default=str))
    print(f"[demo] report: {out / 'report.md'}")
    return results


def _report(out: Path, results: dict) -> str:
    damsm, evaluation = results["damsm"], results["evaluation"]
    lines = [
        "# attngan demo on the synthetic shapes set",
        "",
        "Produced by `make demo` (configs/shapes.yaml); every number below was measured in this "
        "run.",
        "",
        "## DAMSM encoders (test split)",
        "",
        f"- R-precision, sentence level (paper protocol): {_format_r_precision(damsm['sentence'])}",
        f"- R-precision, word level (DAMSM score S): {_format_r_precision(damsm['word'])}",
        "- run folder: [damsm/](damsm/) (metrics.jsonl, r_precision.json, checkpoints/)",
        "",
        "## Generator: does it follow the caption? (analytic shapes checker)",
        "",
        "| attribute | true captions | shuffled captions | gap |",
        "|---|---|---|---|",
    ]
    checker = evaluation["checker"]
    for name, gap in checker["gap"].items():
        lines.append(
            f"| {name} | {checker['true'][name]:.3f} | "
            f"{checker['shuffled'][name]:.3f} | {gap:+.3f} |"
        )
    lines += [
        "",
        f"- R-precision of generated images with the DAMSM encoders: "
        f"{_format_r_precision(evaluation['r_precision'])}",
        f"- protocol: {evaluation['protocol']['samples']} generated images at "
        f"{evaluation['protocol']['resolution']} px, captions drawn from the test "
        "split (every test image once per round); "
        "details in [evaluation.json](evaluation.json)",
    ]
    lines += ["", "## Samples and attention", ""]
    for path in results["samples"]:
        relative = Path(path).relative_to(out) if Path(path).is_relative_to(out) else Path(path)
        lines.append(f"- [{relative}]({relative})")
    lines += ["", "## Time (seconds)", ""]
    lines += [f"- {name}: {seconds}" for name, seconds in results["seconds"].items()]
    return "\n".join(lines) + "\n"
