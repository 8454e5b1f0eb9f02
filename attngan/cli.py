"""The `attngan` command line (also `python -m attngan`).

Subcommands:
    make-synthetic OUT          write the built-in shapes data set (CUB layout) to OUT
    prepare ROOT                build ROOT/captions.pickle (CUB text/ or COCO annotations) and,
                                with --image-cache, the decoded-image caches
    pretrain-damsm              pretrain the DAMSM text and image encoders, report R-precision
    import-damsm                the original's released DAMSM encoders as a DAMSM run
    import-generator            the original's released generator as a GAN run
    train                       train AttnGAN with frozen DAMSM encoders
    sample                      generate images and attention figures for captions
    evaluate                    score a generator on the test split (IS and FID with weights)
    demo                        all of the above on the synthetic set, in minutes on a CPU
    tune                        show (or --clear) the implementations auto measured as fastest
    serve                       a web page and a JSON API that generate from a GAN run
                                (needs the extra: pip install 'attngan[serve]')
Errors a user can cause (a config typo, missing data, an unknown word, a wrong checkpoint)
print one line naming the problem and the fix and exit with status 2; ATTNGAN_DEBUG=1 shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from attngan import __version__
from attngan.backend import ImplementationUnavailable
from attngan.config import load_config, preset_names, refuse_unused_overrides
from attngan.distributed import launched_by_torchrun, leave_world
from attngan.files import OutputError, output_error
from attngan.metrics import INCEPTION_SPLITS, INCEPTION_VARIANT, PAPER_SAMPLES, PIXELS
from attngan.serve import DEFAULT_QUEUE, serve  # FastAPI is imported only to serve

MAX_SEED = 2**62  # sampling and evaluation add a batch's index; torch takes 64 bits


def _integer(low: int, high: Optional[int], what: str):
    """An argparse type: an integer from `low` to `high` (None: no bound), `what` naming that
    range in its error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


_seed = _integer(0, MAX_SEED, "a seed from 0 to 2^62")
_port = _integer(0, 65535, "a port from 0 to 65535")
_queue = _integer(0, None, "a number of requests from 0")


def _add_config_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--config",
        default=default,
        help=f"a YAML file, or a preset by name ({', '.join(preset_names())}; default: {default})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. damsm.batch_size=8",
    )


def _add_accept_changed_data(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--accept-changed-data",
        action="store_true",
        help=f"{what} (refused by default: its numbers would be of neither)",
    )


def _config(args):
    refuse_unused_overrides(args.command, args.overrides)
    return load_config(args.config, args.overrides)


def _make_synthetic(args) -> int:
    from attngan.data.synthetic import make_synthetic

    config = _config(args)
    out = make_synthetic(args.out, config.data.synthetic, force=args.force)
    print(f"synthetic shapes data set written to {out}")
    return 0


def _prepare(args) -> int:
    from attngan.data import prepare

    if (args.config is not None or args.overrides) and not args.image_cache:
        raise ValueError(
            "--config and --set shape the image cache only: add --image-cache, or leave them out"
        )
    if args.image_cache and args.config is None:
        raise ValueError(
            "--image-cache needs --config: the config you will train with (its "
            "image sizes and crops shape the cache), e.g. --config birds"
        )
    existing = (Path(args.root) / "captions.pickle").is_file()
    path = prepare(args.root)
    if existing:
        print(
            f"{path} exists and was kept, not rebuilt (its vocabulary is the one encoders "
            "trained on it know); to rebuild it from the captions, delete it first: the new "
            "vocabulary will not match those encoders"
        )
    else:
        print(f"captions written to {path}")
    if args.image_cache:
        _prepare_image_cache(args)
    return 0


def _prepare_image_cache(args) -> None:
    from attngan.config import with_absolute_paths
    from attngan.data.loader import prepare_image_cache

    config = _config(args)
    data = with_absolute_paths(
        dataclasses.replace(config, data=dataclasses.replace(config.data, root=args.root))
    ).data
    for split in ("train", "test"):
        path, written = prepare_image_cache(data, split)
        size = f"{path.stat().st_size / 1e9:.2f} GB"
        print(
            f"image cache of the {split} split written to {path} ({size})"
            if written
            else f"image cache of the {split} split {path} ({size}) is current, kept"
        )


def _print_r_precision(results: dict) -> None:
    for name in ("sentence", "word"):
        r = results[name]
        print(
            f"R-precision ({name} level, 1 true caption vs {r['candidates'] - 1} others, "
            f"{r['n']} test images, {r['num_folds']} folds): "
            f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} %  "
            f"(chance {100 / r['candidates']:.0f} %)"
        )


def _run_folder(args, suffix: str) -> Path:
    """--out, or runs/<preset or config file name>_<suffix>."""
    return Path(args.out or f"runs/{Path(args.config).stem}_{suffix}")


def _pretrain_damsm(args) -> int:
    from attngan.train.damsm import pretrain_damsm

    config = _config(args)
    out = _run_folder(args, "damsm")
    results = pretrain_damsm(
        config, out, resume=args.resume, accept_changed_data=args.accept_changed_data
    )
    if results is not None:  # under torchrun, rank 0's
        _print_r_precision(results)
        print(f"run folder: {out} (checkpoint {results['checkpoint']})")
    return 0


def _import_damsm(args) -> int:
    from attngan.train.import_original import import_damsm

    config = _config(args)
    out = _run_folder(args, "released")
    results = import_damsm(
        args.text_encoder, args.image_encoder, config, out, r_precision=args.r_precision
    )
    if args.r_precision:
        _print_r_precision(results)
    print(f"run folder: {out} (checkpoint {results['checkpoint']})")
    return 0


def _import_generator(args) -> int:
    from attngan.train.import_original import import_generator

    config = _config(args)
    out = _run_folder(args, "released")
    results = import_generator(args.netG, args.damsm, config, out)
    print(f"run folder: {out} (checkpoint {results['checkpoint']})")
    return 0


def _train(args) -> int:
    from attngan.train.gan import train_gan

    config = _config(args)
    out = _run_folder(args, "gan")
    results = train_gan(
        config, args.damsm, out, resume=args.resume, accept_changed_data=args.accept_changed_data
    )
    if results is not None:  # under torchrun, rank 0's
        print(json.dumps(results, indent=2))
        print(f"run folder: {out}")
    return 0


def _read_captions(args) -> list[str]:
    texts = list(args.text or [])
    if args.captions:
        path = Path(args.captions)
        if not path.is_file():
            raise FileNotFoundError(
                f"captions file {path} does not exist or is not a file; "
                "pass a text file with one caption per line"
            )
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(
                f"captions file {path} is not UTF-8 text ({error.reason} at byte "
                f"{error.start}); save it as UTF-8"
            ) from None
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise ValueError(f"captions file {path} has no captions; write one caption per line")
        texts += from_file
    if not texts:
        raise ValueError('no captions given: pass --text "a caption" or --captions FILE')
    return texts


def _sample(args) -> int:
    from attngan.sampling import sample_captions

    paths = sample_captions(
        args.ckpt,
        _read_captions(args),
        n=args.n,
        out_dir=args.out,
        device=args.device,
        seed=args.seed,
    )
    for path in paths:
        print(path)
    return 0


def _evaluate(args) -> int:
    from attngan.metrics.evaluate import UnsavedResults, evaluate_generator

    try:
        results = evaluate_generator(
            args.ckpt,
            out_path=args.out,
            device=args.device,
            samples=args.samples,
            seed=args.seed,
            damsm_path=args.damsm,
            inception_weights=args.inception_weights,
            inception_variant=args.inception_variant,
            fid_stats=args.fid_stats,
            inception_splits=args.inception_splits,
            data_root=args.data_root,
            accept_changed_data=args.accept_changed_data,
            pixels=args.pixels,
        )
    except UnsavedResults as error:  # printed, so that the work is not lost
        print(json.dumps(error.results, indent=2))
        raise
    if results is not None:  # under torchrun, rank 0's
        print(json.dumps(results, indent=2))
    return 0


def _demo(args) -> int:
    from attngan.demo import run_demo

    run_demo(Path(args.out), overrides=args.overrides, quick=args.quick)
    return 0


def _tune(args) -> int:
    import torch

    from attngan import autotune, backend

    path = autotune.cache_path()
    if args.clear:
        try:
            removed = autotune.clear()
        except OSError as error:
            raise ValueError(
                f"cannot delete the tuning cache {path} ({error.strerror}); "
                f"{autotune.CACHE_VARIABLE} must name a file"
            ) from None
        print(f"removed {path}" if removed else f"no tuning cache at {path}")
        return 0
    print(f"implementations: {backend.describe()}")
    here = {
        autotune.machine_identity(torch.device(kind))
        for kind in backend.MEASURED_DEVICE_TYPES
        if kind == "cpu" or (kind == "cuda" and torch.cuda.is_available())
    }
    machines = autotune.recorded()
    if not machines:
        print(f"no measurements in {path} yet: auto measures at the first call of each op shape")
    for identity, entries in sorted(machines.items()):
        print(f"{identity}{' (this machine)' if identity in here else ''}:")
        for entry, record in sorted(entries.items()):
            times = ", ".join(f"{impl} {ms:.3f} ms" for impl, ms in record["ms"].items())
            print(f"  {entry}: {record['impl']} ({times})")
    return 0


def _serve(args) -> int:
    serve(
        args.ckpt,
        host=args.host,
        port=args.port,
        device=args.device,
        queue=args.queue,
        data_root=args.data_root,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attngan", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"attngan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("make-synthetic", help="write the synthetic shapes data set")
    p.add_argument("out", help="output folder, e.g. data/shapes")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a synthetic set already in OUT (runs trained on it will refuse the new one)",
    )
    _add_config_arguments(p, "shapes")
    p.set_defaults(run=_make_synthetic)

    p = commands.add_parser(
        "prepare",
        help="build captions.pickle (CUB text/ or COCO annotations) and the decoded-image caches",
    )
    p.add_argument("root", help="data folder holding text/ and train|test/filenames.pickle")
    p.add_argument(
        "--image-cache",
        action="store_true",
        help="also write each split's decoded-image cache, which training and "
        "evaluation then read instead of decoding the images (the same pixels, "
        "a fraction of the CPU time): one file per split and load size in "
        "data.image_cache (default ROOT/image_cache/). Sizes: CUB at the birds "
        "preset 2.5-3.3 GB for its 8,855 training images and 0.8-1.1 GB for the "
        "test split (277 KB per square box crop, 369 KB at 4:3); COCO at the "
        "coco preset about 31 GB for train2014 and 15 GB for val2014 (369 KB "
        "per 640x480 image); the DAMSM presets 36 %% more. A cache that no "
        "longer matches its images or settings is rebuilt",
    )
    p.add_argument(
        "--config",
        help="with --image-cache: the config you will train with, a "
        "YAML file or a preset by name (its image sizes and crops "
        "shape the cache; ROOT replaces its data.root)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --image-cache: override a setting of "
        "--config, e.g. data.image_cache=/scratch/cache",
    )
    p.set_defaults(run=_prepare)

    p = commands.add_parser("pretrain-damsm", help="pretrain the DAMSM encoders")
    _add_config_arguments(p, "shapes")
    p.add_argument("--out", help="run folder (default runs/<config>_damsm)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    _add_accept_changed_data(p, "--resume on a data set other than the run's")
    p.set_defaults(run=_pretrain_damsm)

    p = commands.add_parser(
        "import-damsm", help="the original's released DAMSM encoders as a DAMSM run"
    )
    _add_config_arguments(p, "birds_damsm")
    p.add_argument("--text-encoder", required=True, help="the original's text_encoder*.pth")
    p.add_argument("--image-encoder", required=True, help="the original's image_encoder*.pth")
    p.add_argument("--out", help="run folder (default runs/<config>_released)")
    p.add_argument(
        "--r-precision",
        action="store_true",
        help="also measure the test split's R-precision (Inception over every test image)",
    )
    p.set_defaults(run=_import_damsm)

    p = commands.add_parser(
        "import-generator", help="the original's released generator as a GAN run"
    )
    _add_config_arguments(p, "birds")
    p.add_argument("--netG", required=True, help="the original's netG_epoch_*.pth")
    p.add_argument(
        "--damsm", required=True, help="DAMSM run of its text encoder (attngan import-damsm)"
    )
    p.add_argument("--out", help="run folder (default runs/<config>_released)")
    p.set_defaults(run=_import_generator)

    p = commands.add_parser("train", help="train AttnGAN with frozen DAMSM encoders")
    _add_config_arguments(p, "shapes")
    p.add_argument("--damsm", required=True, help="DAMSM run folder or checkpoint file")
    p.add_argument("--out", help="run folder (default runs/<config>_gan)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    _add_accept_changed_data(p, "--resume on a data set other than the run's")
    p.set_defaults(run=_train)

    p = commands.add_parser("sample", help="images and attention figures for captions")
    p.add_argument("--ckpt", required=True, help="GAN checkpoint file or run folder")
    p.add_argument("--text", action="append", help="a caption (repeatable)")
    p.add_argument("--captions", help="text file, one caption per line")
    p.add_argument("--n", type=int, default=8, help="images per caption (default 8)")
    p.add_argument(
        "--out", default="samples", help="output folder (default samples/ in the current folder)"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: the GPU when there is one, else the CPU), cpu or cuda[:N]",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the noise (default 0: the same images every time)",
    )
    p.set_defaults(run=_sample)

    p = commands.add_parser(
        "evaluate",
        help="checker accuracy, R-precision, and with Inception weights IS and FID, of a generator",
    )
    p.add_argument("--ckpt", required=True, help="GAN checkpoint file or run folder")
    p.add_argument("--out", help="JSON file for the results")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: the GPU when there is one, else the CPU), cpu or cuda[:N]",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=PAPER_SAMPLES,
        help=f"images to generate (default {PAPER_SAMPLES:,}, the paper's), with "
        f"captions drawn from the test split: every test image once per round",
    )
    p.add_argument(
        "--damsm",
        help="DAMSM run or checkpoint for R-precision (default: the one the GAN was trained with)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the noise and the R-precision folds (default 0)",
    )
    p.add_argument(
        "--data-root",
        metavar="PATH",
        help="where the run's data set is now (default: data.root of its config)",
    )
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="Inception-v3 weights file: adds the Inception Score and FID",
    )
    p.add_argument(
        "--inception-variant",
        help=f"the network of that file (default {INCEPTION_VARIANT}): torchvision "
        f"for torchvision's inception_v3_google-*.pth, pytorch-fid for "
        f"pytorch-fid's pt_inception-2015-12-05-*.pth",
    )
    p.add_argument(
        "--fid-stats",
        metavar="PATH",
        help="real statistics for FID (.npz, pytorch-fid's format); a path that does "
        "not exist receives those of the test split (default: computed, not kept)",
    )
    p.add_argument(
        "--inception-splits",
        type=int,
        help=f"splits of the Inception Score (default {INCEPTION_SPLITS})",
    )
    p.add_argument(
        "--pixels",
        choices=PIXELS,
        default=PIXELS[0],
        help="what the metrics read: uint8 (default), the pixels of the PNG files "
        "the original's sampler writes and the reference score tools read; "
        "float, the generator's output itself",
    )
    _add_accept_changed_data(p, "evaluate on a test split other than the one the run recorded")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("demo", help="the whole pipeline on the synthetic set")
    p.add_argument("--out", default="demo", help="output folder (default demo/)")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the shapes preset (configs/shapes.yaml)",
    )
    p.set_defaults(run=_demo)

    p = commands.add_parser(
        "tune",
        help="show the implementations auto measured as fastest (the tuning cache), or clear them",
    )
    p.add_argument(
        "--clear",
        action="store_true",
        help="delete the tuning cache: auto measures again at the next calls",
    )
    p.set_defaults(run=_tune)

    p = commands.add_parser(
        "serve",
        help="a web page and a JSON API that generate from a GAN "
        "run (pip install 'attngan[serve]')",
    )
    p.add_argument("--ckpt", required=True, help="GAN checkpoint file or run folder")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 "
        "for every network)",
    )
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: the GPU when there is one, else the CPU), cpu or cuda[:N]",
    )
    p.add_argument(
        "--queue",
        type=_queue,
        default=DEFAULT_QUEUE,
        help=f"requests that may wait while one generates (default {DEFAULT_QUEUE}); "
        "more are answered 503 with Retry-After",
    )
    p.add_argument(
        "--data-root",
        metavar="PATH",
        help="where the run's data set is now, for random test captions (default: "
        "data.root of its config)",
    )
    p.set_defaults(run=_serve)
    return parser


USER_ERRORS = (ValueError, FileNotFoundError, ImplementationUnavailable)
# The kind of run (attngan.train.checkpoint; also its default folder's suffix) of each command
# that trains, for Ctrl-C's advice.
TRAINING_RUNS = {"pretrain-damsm": "damsm", "train": "gan"}


def _how_to_go_on(args) -> str:
    """What to do after Ctrl-C: continue a run that wrote a checkpoint (written atomically, so
    the last one is whole), or start over one that did not."""
    if args.command == "demo":
        return "; the same command goes on from the runs' last checkpoints"
    if args.command not in TRAINING_RUNS:
        return ""
    from attngan.train.checkpoint import CHECKPOINT_NAMES

    kind = TRAINING_RUNS[args.command]
    if (_run_folder(args, kind) / "checkpoints" / CHECKPOINT_NAMES[kind]).is_file():
        return "; the same command with --resume goes on from the run's last checkpoint"
    return "; the run wrote no checkpoint yet: the same command (without --resume) starts it again"


def user_message(error: BaseException) -> str:
    """The one line to print for a user error. An error raised in a DataLoader worker process
    (data.num_workers > 0) comes back as "Caught DataError in DataLoader worker process 0.",
    the worker's traceback, and last "attngan.data.errors.DataError: <message>": the message is
    that last part."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        kind = type(error)
        for marker in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
            if marker in text:
                return text.rsplit(marker, 1)[1].strip()
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    finally:
        leave_world()


def _run(args) -> int:
    """Run the command of `args`; a user's error is one line on standard error (on every rank
    under torchrun, naming the rank beyond the first), and exit status 2."""
    if os.environ.get("ATTNGAN_DEBUG") == "1":
        return args.run(args)
    rank = os.environ.get("RANK", "0") if launched_by_torchrun() else "0"
    name = f"attngan {args.command}" + (f" (rank {rank})" if rank != "0" else "")
    try:
        return args.run(args)
    except USER_ERRORS as error:
        advice = _how_to_go_on(args) if isinstance(error, OutputError) else ""
        print(f"{name}: error: {user_message(error)}{advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted{_how_to_go_on(args)}", file=sys.stderr)
        return 130
    except OSError as error:  # a write refused by the system, outside the atomic ones
        failure = output_error(error.filename or "a file", error)
        if failure is None:
            raise
        print(f"{name}: error: {failure}{_how_to_go_on(args)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
