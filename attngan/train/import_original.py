"""The original AttnGAN's released models as attngan runs: its DAMSM encoders as a DAMSM run
(`attngan import-damsm`), its generators as a GAN run (`attngan import-generator`).

The original repository (taoxugit/AttnGAN) released its pretrained DAMSM encoders as plain state
dicts: `text_encoder200.pth` / `image_encoder200.pth` for CUB, `text_encoder100.pth` /
`image_encoder100.pth` for COCO. Its text encoder's keys are this project's (`encoder.weight`, the
word embedding, and `rnn.*`, the bidirectional LSTM); its image encoder holds the Inception-v3
trunk at the top level (`Conv2d_1a_3x3.conv.weight`, ...) where this project's has it under
`trunk.`, and the same heads (`emb_features.weight`, `emb_cnn_code.weight`, `emb_cnn_code.bias`).
Files of the PyTorch of 2018 lack BatchNorm's `num_batches_tracked` counters; the encoders do not
use them.

Word ids: the released encoders index the words of the `captions.pickle` released with them (in
the original's data archives). The data folder must hold that file; a vocabulary built again
from the text files orders its words differently, and the embeddings would then belong to other
words, so the import refuses a folder without it, and an embedding whose row count differs
from the vocabulary's.

The original enlarged images to 299 px with bilinear interpolation on a PyTorch (<= 0.3.1)
whose bilinear resize aligned the corners: the imported run sets `image_encoder.align_corners`.

The run folder gets `config.yaml` and `checkpoints/damsm_last.pt` as a pretraining run does, so
`attngan train --damsm` and `attngan evaluate --damsm` take it; the checkpoint records the
source files and their sha256 under `imported` and has no optimizer state (it cannot be
resumed). With `r_precision`, the test split's R-precision is measured and written to
`r_precision.json`, as at the end of pretraining.

The released generators (`netG_epoch_*.pth`, `bird_AttnGAN2.pth`, `coco_AttnGAN2.pth`: the
original saves its weight average, as this project's EMA) become a GAN run that `attngan
sample` and `attngan evaluate` take (`import_generator`), conditioned by a DAMSM run (the
imported released encoders). Its modules map one to one onto this project's
(`original_generator_name`): the conditioning augmentation, the first stage's fully connected
layer and four upsampling blocks, per later stage the word projection (a 1x1 Conv2d there, a
1x1 Conv1d here: the same weights), the residual blocks and the upsampling block, and the image
heads. The original's attention mask defect (docs/DEVIATIONS.md) lives in its code, not its
weights: the imported generator masks per sample. Such a run has no discriminators or optimizer
state and cannot be resumed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional, Union

import torch.nn as nn

from attngan.config import Config, ConfigError, config_to_dict, save_config, with_absolute_paths
from attngan.data.dataset import build_dataset, read_split
from attngan.data.errors import DataError
from attngan.files import file_sha256, write_text_atomically
from attngan.nn.generator import Generator
from attngan.nn.image_encoder import build_image_encoder
from attngan.nn.state_files import load_state_exactly, read_state_file
from attngan.nn.text_encoder import TextEncoder
from attngan.train.checkpoint import (
    CheckpointError,
    holds_run_folder,
    run_checkpoint_path,
    save_checkpoint,
)
from attngan.train.damsm import evaluate_r_precision, load_damsm, resolve_damsm_checkpoint
from attngan.train.runtime import prepare_run

__all__ = ["import_damsm", "import_generator", "original_generator_name"]

_TRUNK = "trunk."


def original_generator_name(key: str) -> str:
    """The original G_NET's name of this project's Generator parameter or buffer `key`."""
    top, *rest = key.split(".")
    if top == "ca":  # ca.fc.*: the conditioning augmentation
        return ".".join(["ca_net", *rest])
    if top == "first" and rest[0] == "fc":  # first.fc.*: the first stage's Linear + BN
        return ".".join(["h_net1", *rest])
    if top == "first":  # first.up.{i}.*: its upsampling blocks
        return ".".join([f"h_net1.upsample{int(rest[1]) + 1}", *rest[2:]])
    if top == "stages":  # stages.{s}.*: the later stages
        net, part = f"h_net{int(rest[0]) + 2}", rest[1]
        if part == "project":  # the word projection
            return f"{net}.att.conv_context.weight"
        if part == "residual":  # residual.{b}.body.*
            return ".".join([f"{net}.residual.{rest[2]}.block", *rest[4:]])
        if part == "up":
            return ".".join([f"{net}.upsample", *rest[2:]])
    if top == "heads":  # heads.{s}.0.weight: the image heads
        return ".".join([f"img_net{int(rest[0]) + 1}.img", *rest[1:]])
    return key


def _read_state(path: Path, what: str) -> dict:
    """The state dict in the original's file `path` (its `what`), or CheckpointError."""
    return read_state_file(
        path,
        f"{what} file",
        f"pass the original's released {what} file (a .pth state dict)",
        CheckpointError,
    )


def _load_exact(
    module: nn.Module,
    state: dict,
    path: Path,
    what: str,
    fix: str,
    rename: Optional[Callable[[str], str]] = None,
    file_name: Optional[Callable[[str], str]] = None,
) -> None:
    """Load the original's `state` into `module`, every key and no other (load_state_exactly)."""
    load_state_exactly(
        module,
        state,
        path,
        f"{what} file",
        f"the original's {what}",
        fix,
        CheckpointError,
        rename,
        file_name,
    )


@holds_run_folder("attngan import-damsm")
def import_damsm(
    text_path: Union[str, Path],
    image_path: Union[str, Path],
    config: Config,
    out_dir: Union[str, Path],
    r_precision: bool = False,
) -> dict:
    """Write a DAMSM run in `out_dir` from the original's released encoders (module docstring);
    returns dict(checkpoint, imported, and with `r_precision` the test split's R-precision)."""
    text_path, image_path, out_dir = Path(text_path), Path(image_path), Path(out_dir)
    config = with_absolute_paths(config)
    checkpoint_path = run_checkpoint_path(out_dir, "damsm", resume=False)
    if config.image_encoder.backbone != "inception":
        raise ConfigError(
            "the released image encoders are Inception-v3 ones; use "
            "configs/birds_damsm.yaml or configs/coco_damsm.yaml (or set "
            "image_encoder.backbone=inception)"
        )
    captions_file = Path(config.data.root) / "captions.pickle"
    if not captions_file.is_file():
        raise DataError(
            f"{captions_file} does not exist: the released encoders index the words "
            f"of the captions.pickle released with them (in the original's data "
            f"archive); put it in data.root. A vocabulary built from the text files "
            f"orders its words differently"
        )
    vocab = read_split(config.data, "train").vocab
    text_state = _read_state(text_path, "text encoder")
    image_state = _read_state(image_path, "image encoder")

    embedding = text_state.get("encoder.weight")
    if embedding is not None and embedding.dim() == 2 and embedding.shape[0] != len(vocab):
        raise CheckpointError(
            f"the text encoder {text_path} embeds {embedding.shape[0]} words, "
            f"but {captions_file} holds {len(vocab)}: use the captions.pickle "
            f"released with these encoders"
        )
    text_encoder = TextEncoder(len(vocab), config.text_encoder)
    _load_exact(
        text_encoder,
        text_state,
        text_path,
        "text encoder",
        "set text_encoder.embedding_dim, hidden_dim and rnn to the file's (the "
        "released ones: 300, 256, lstm)",
    )
    image_config = dataclasses.replace(
        config.image_encoder, weights=None, random_init=True, align_corners=True
    )
    image_encoder = build_image_encoder(image_config, config.text_encoder.hidden_dim)
    _load_exact(
        image_encoder,
        image_state,
        image_path,
        "image encoder",
        "set text_encoder.hidden_dim to the width of its emb_cnn_code (256 released)",
        rename=lambda key: key if key.startswith("emb_") else _TRUNK + key,
        file_name=lambda key: key.removeprefix(_TRUNK),
    )

    config = dataclasses.replace(
        config,
        image_encoder=dataclasses.replace(
            config.image_encoder, weights=None, random_init=False, align_corners=True
        ),
    )
    device = prepare_run(config) if r_precision else None  # checked before writing
    imported = {
        "text_encoder": str(text_path),
        "text_encoder_sha256": file_sha256(text_path),
        "image_encoder": str(image_path),
        "image_encoder_sha256": file_sha256(image_path),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    save_checkpoint(
        checkpoint_path,
        {
            "kind": "damsm",
            "config": config_to_dict(config),
            "vocab": list(vocab.ixtoword),
            "vocab_fingerprint": vocab.fingerprint(),
            "text_encoder": text_encoder.state_dict(),
            "image_encoder": image_encoder.state_dict(),
            "imported": imported,
            "epoch": 0,
            "step": 0,
        },
    )
    results = {
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": file_sha256(checkpoint_path),
        "imported": imported,
    }
    if device is not None:
        for module in (text_encoder, image_encoder):
            module.to(device).eval()
        test_set = build_dataset(config.data, "test", augment=False)
        results.update(evaluate_r_precision(text_encoder, image_encoder, test_set, config, device))
        write_text_atomically(out_dir / "r_precision.json", json.dumps(results, indent=2))
    return results


@holds_run_folder("attngan import-generator")
def import_generator(
    netg_path: Union[str, Path],
    damsm_run: Union[str, Path],
    config: Config,
    out_dir: Union[str, Path],
) -> dict:
    """Write a GAN run in `out_dir` from the original's released generator weights, conditioned
    by the DAMSM run `damsm_run` (module docstring); returns dict(checkpoint, imported)."""
    netg_path, out_dir = Path(netg_path), Path(out_dir)
    config = with_absolute_paths(config)
    checkpoint_path = run_checkpoint_path(out_dir, "gan", resume=False)
    damsm_file = resolve_damsm_checkpoint(damsm_run).resolve()
    text_encoder, _, vocab, damsm_config = load_damsm(damsm_file)
    state = _read_state(netg_path, "generator")
    # The word projection is a 1x1 Conv2d in the original and a 1x1 Conv1d here.
    state = {
        key: value.squeeze(-1)
        if key.endswith("conv_context.weight") and value.dim() == 4
        else value
        for key, value in state.items()
    }
    netG = Generator.from_config(config, damsm_config.text_encoder.hidden_dim)
    ours = {original_generator_name(key): key for key in netG.state_dict()}
    _load_exact(
        netG,
        state,
        netg_path,
        "generator",
        "set gan.ngf, gan.r_num and data.branch_num to the released model's (birds: 32, "
        "2, 3; coco: 48, 3, 3: configs/birds.yaml, configs/coco.yaml)",
        rename=lambda key: ours.get(key, key),
        file_name=original_generator_name,
    )
    imported = {"generator": str(netg_path), "generator_sha256": file_sha256(netg_path)}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    save_checkpoint(
        checkpoint_path,
        {
            "kind": "gan",
            "config": config_to_dict(config),
            "damsm_config": config_to_dict(damsm_config),
            "damsm_checkpoint": str(damsm_file),
            "damsm_sha256": file_sha256(damsm_file),
            "vocab": list(vocab.ixtoword),
            "vocab_fingerprint": vocab.fingerprint(),
            "text_encoder": text_encoder.state_dict(),
            "trainer": {"ema": netG.state_dict()},
            "imported": imported,
            "step": 0,
            "epoch": 0,
        },
    )
    return {"checkpoint": str(checkpoint_path), "imported": imported}
