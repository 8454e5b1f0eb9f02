"""Inception Score and Fréchet Inception Distance of generated images.

The protocol: docs/DESIGN.md, "Evaluation".
Networks (`INCEPTION_VARIANTS`), read from a weights file the user names, in torchvision's key
names (`attngan.nn.inception.InceptionClassifier`): "torchvision" (ImageNet Inception-v3, 1000
classes, the score from its logits) and "pytorch-fid" (the TensorFlow 2015 graph as pytorch-fid
ports it, 1008 outputs: TensorFlow's pools, the score from logits without the classifier's bias,
FID from pool3). A score is comparable only with scores of the same network: the protocol names
it with its file's sha256. Neither is the CUB-fine-tuned network of the paper's CUB score.
Statistics files are `.npz` with `mu` [2048] and `sigma` [2048, 2048] (pytorch-fid's
`--save-stats` format); those written here also name the network and the image resolution, and
are refused by another network.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from attngan.config import ConfigError
from attngan.files import file_sha256, require_writable, write_atomically
from attngan.metrics import INCEPTION_SPLITS, INCEPTION_VARIANT
from attngan.nn.inception import InceptionClassifier, load_inception_state, read_inception_file

__all__ = [
    "INCEPTION_VARIANTS",
    "INPUT_SIZE",
    "InceptionNetwork",
    "FeatureMoments",
    "GeneratedImageScores",
    "load_inception_network",
    "check_splits",
    "inception_score",
    "frechet_distance",
    "load_statistics",
    "save_statistics",
]

INCEPTION_VARIANTS = {"torchvision": 1000, "pytorch-fid": 1008}  # name: classifier outputs
INPUT_SIZE = 299
FEATURES = 2048
METRICS_HINT = (
    "name the weights file and its variant yourself (nothing is downloaded): torchvision's "
    "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth with "
    "--inception-variant torchvision, or pytorch-fid's https://github.com/mseitzer/pytorch-fid/"
    "releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth with "
    "--inception-variant pytorch-fid"
)


@dataclass
class InceptionNetwork:
    """A loaded evaluation network and the protocol entries that identify it."""

    model: InceptionClassifier
    device: torch.device
    protocol: dict = field(default_factory=dict)

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool3 features float64 [B, 2048], class probabilities float64 [B, K]) on the CPU
        for images [B, 3, H, W] in [-1, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"Inception metrics need RGB images [B, 3, H, W], got {tuple(images.shape)}"
            )
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(
                x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
            )
        features, logits = self.model(x)
        return features.double().cpu(), torch.softmax(logits.double(), dim=1).cpu()


def load_inception_network(
    path: Union[str, Path],
    variant: str = INCEPTION_VARIANT,
    device: Union[str, torch.device] = "cpu",
) -> InceptionNetwork:
    """The Inception-v3 classifier of `variant` with the weights in `path` (see the module
    docstring); ConfigError naming the file and the fix for a missing, corrupt or unfitting
    file or an unknown variant."""
    if variant not in INCEPTION_VARIANTS:
        raise ConfigError(
            f"unknown Inception variant {variant!r}; choose from {', '.join(INCEPTION_VARIANTS)}"
        )
    path = Path(path)
    state = read_inception_file(path, METRICS_HINT)
    classifier = state.get("fc.weight")
    if classifier is None or classifier.dim() != 2 or classifier.shape[1] != FEATURES:
        raise ConfigError(
            f"Inception weights file {path} has no classifier (fc.weight "
            f"[classes, {FEATURES}]), which the Inception Score needs; "
            f"{METRICS_HINT}"
        )
    classes, expected = classifier.shape[0], INCEPTION_VARIANTS[variant]
    if classes != expected:  # the pools and the score differ by variant: never mix them
        fitting = [name for name, count in INCEPTION_VARIANTS.items() if count == classes]
        raise ConfigError(
            f"Inception weights file {path} has {classes} classes, but the "
            f"{variant} network has {expected}: "
            + (
                f"pass --inception-variant {fitting[0]} for this file"
                if fitting
                else f"pass torchvision's or pytorch-fid's file; {METRICS_HINT}"
            )
        )
    tf_graph = variant == "pytorch-fid"
    model = InceptionClassifier(classes, tf_pools=tf_graph, logits_bias=not tf_graph)
    load_inception_state(model, state, path, METRICS_HINT)
    device = torch.device(device)
    protocol = dict(
        variant=variant,
        weights=str(path),
        weights_sha256=file_sha256(path),
        classes=classes,
        input_size=INPUT_SIZE,
        resize="bilinear, align_corners=False (PyTorch)",
        inception_score_logits="without the classifier's bias"
        if tf_graph
        else "with the classifier's bias",
    )
    return InceptionNetwork(model.to(device).eval(), device, protocol)


def check_splits(images: int, splits: int) -> None:
    """ValueError unless `images` fill `splits` Inception Score splits."""
    if splits < 1:
        raise ValueError(f"the Inception Score needs at least 1 split, got {splits}")
    if images < splits:
        raise ValueError(
            f"the Inception Score over {splits} splits needs at least {splits} "
            f"images, got {images}; generate more images or use fewer splits"
        )


def inception_score(probabilities: torch.Tensor, splits: int = INCEPTION_SPLITS) -> dict:
    """dict(mean, std, splits, images) of the Inception Score of p(y|x) rows [N, K]."""
    if probabilities.dim() != 2:
        raise ValueError(
            f"probabilities must be [images, classes], got {tuple(probabilities.shape)}"
        )
    count = probabilities.shape[0]
    check_splits(count, splits)
    p = probabilities.double()
    scores = []
    for k in range(splits):
        part = p[k * count // splits : (k + 1) * count // splits]
        marginal = part.mean(dim=0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(dim=1)
        scores.append(float(kl.mean().exp()))
    return dict(mean=float(np.mean(scores)), std=float(np.std(scores)), splits=splits, images=count)


class FeatureMoments:
    """Running sums of features (float64) for their mean and covariance."""

    def __init__(self, dim: int = FEATURES):
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.products = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, features: torch.Tensor) -> None:
        x = features.double().cpu()
        self.count += x.shape[0]
        self.total += x.sum(dim=0)
        self.products += x.T @ x

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu [dim], sigma [dim, dim]) with the unbiased (N - 1) covariance."""
        if self.count < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.count}")
        mu = self.total / self.count
        sigma = (self.products - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return mu, (sigma + sigma.T) / 2


def _root_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues that
    rounding made negative count as 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance of two Gaussians (numpy arrays or tensors), in float64."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    dim = mu1.shape[0]
    if (
        mu1.shape != (dim,)
        or mu2.shape != (dim,)
        or sigma1.shape != (dim, dim)
        or sigma2.shape != (dim, dim)
    ):
        raise ValueError(
            f"FID statistics disagree in shape: mu {tuple(mu1.shape)} and "
            f"{tuple(mu2.shape)}, sigma {tuple(sigma1.shape)} and "
            f"{tuple(sigma2.shape)}"
        )
    root1 = _root_psd((sigma1 + sigma1.T) / 2)
    middle = root1 @ sigma2 @ root1
    eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * eigenvalues.sqrt().sum())


def save_statistics(
    path: Union[str, Path],
    mu: torch.Tensor,
    sigma: torch.Tensor,
    network: InceptionNetwork,
    resolution: int,
    images: int,
) -> None:
    """Write mu and sigma in pytorch-fid's format plus what they were computed with; never
    overwrites a file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; statistics are never written over a file")
    write_atomically(
        path,
        lambda file: np.savez(
            file,
            mu=mu.numpy(),
            sigma=sigma.numpy(),
            variant=np.array(network.protocol["variant"]),
            weights_sha256=np.array(network.protocol["weights_sha256"]),
            resolution=np.array(resolution),
            images=np.array(images),
        ),
    )


def load_statistics(
    path: Union[str, Path],
    network: Optional[InceptionNetwork] = None,
    resolution: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(mu, sigma, what the file records) from an .npz of pytorch-fid's format. A file this
    module wrote must name `network`'s variant and weights and, given, `resolution`. Errors name
    the file and the fix."""
    path = Path(path)
    fix = (
        "write it with `attngan evaluate --fid-stats PATH` (a path that does not exist yet "
        "gets the test split's statistics) or pytorch-fid's --save-stats"
    )
    try:
        with np.load(path, allow_pickle=False) as data:
            content = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise ConfigError(f"FID statistics file {path} does not exist; {fix}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConfigError(
            f"FID statistics file {path} could not be read as an .npz file "
            f"({type(error).__name__}: {error}); {fix}"
        ) from None
    missing = [key for key in ("mu", "sigma") if key not in content]
    if missing:
        raise ConfigError(
            f"FID statistics file {path} lacks {' and '.join(missing)} (it has "
            f"{', '.join(sorted(content)) or 'nothing'}); {fix}"
        )
    mu, sigma = content["mu"], content["sigma"]
    if (
        mu.ndim != 1
        or sigma.shape != (mu.shape[0], mu.shape[0])
        or not np.issubdtype(mu.dtype, np.floating)
        or not np.issubdtype(sigma.dtype, np.floating)
    ):
        raise ConfigError(
            f"FID statistics file {path} holds mu {mu.shape} {mu.dtype} and sigma "
            f"{sigma.shape} {sigma.dtype}; expected float mu [d] and sigma [d, d]; "
            f"{fix}"
        )
    if mu.shape[0] != FEATURES:
        raise ConfigError(
            f"FID statistics file {path} holds statistics of {mu.shape[0]} "
            f"features, but FID compares Inception's {FEATURES} pool features; "
            f"{fix}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ConfigError(f"FID statistics file {path} holds NaN or infinite values; {fix}")
    recorded = {
        key: content[key].item()
        for key in ("variant", "weights_sha256", "resolution", "images")
        if key in content
    }
    if network is not None and "weights_sha256" in recorded:
        ours = (network.protocol["variant"], network.protocol["weights_sha256"])
        theirs = (recorded.get("variant"), recorded["weights_sha256"])
        if ours != theirs:
            raise ConfigError(
                f"FID statistics file {path} was computed with the {theirs[0]} "
                f"Inception of sha256 {theirs[1]}, not with this evaluation's "
                f"{ours[0]} of sha256 {ours[1]}; pass statistics of this network "
                f"(a new path computes them)"
            )
    if resolution is not None and recorded.get("resolution", resolution) != resolution:
        raise ConfigError(
            f"FID statistics file {path} holds statistics of "
            f"{recorded['resolution']} px images, but the generator makes "
            f"{resolution} px images; pass statistics at {resolution} px (a new "
            f"path computes them)"
        )
    return (
        torch.as_tensor(mu, dtype=torch.float64),
        torch.as_tensor(sigma, dtype=torch.float64),
        recorded,
    )


class GeneratedImageScores:
    """The Inception Score and FID of generated images, fed batch by batch (attngan evaluate).

    Everything a user names is checked on construction, before any image is generated: the
    weights file, `count` images against the splits, and `fid_stats` (read when it exists; else
    its folder must be writable, since the real statistics are written there at the end).
    `add(images)` takes generated batches at `resolution` px; `results(real_batches)` returns
    (score dict, FID, protocol dict), computing the real statistics from the batches
    `real_batches()` yields when no file gave them.
    """

    def __init__(
        self,
        weights: Union[str, Path],
        variant: str,
        device: Union[str, torch.device],
        splits: int,
        count: int,
        resolution: int,
        fid_stats: Optional[Union[str, Path]] = None,
    ):
        self.network = load_inception_network(weights, variant, device)
        check_splits(count, splits)
        self.splits, self.resolution = splits, resolution
        self.fid_stats = None if fid_stats is None else Path(fid_stats)
        self.real, self.real_source = None, None
        if self.fid_stats is not None and self.fid_stats.exists():
            mu, sigma, recorded = load_statistics(self.fid_stats, self.network, resolution)
            self.real = (mu, sigma)
            self.real_source = dict(
                file=str(self.fid_stats), sha256=file_sha256(self.fid_stats), **recorded
            )
        elif self.fid_stats is not None:
            require_writable(self.fid_stats.parent, "--fid-stats path")
        self.moments = FeatureMoments()
        self.probabilities: list[torch.Tensor] = []

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool features, class probabilities) of generated `images`, for `add_outputs`."""
        if images.shape[-1] != self.resolution:
            raise ValueError(
                f"the generator makes {images.shape[-1]} px images but the test "
                f"images are {self.resolution} px (data.image_sizes); FID compares "
                f"the two at one size"
            )
        return self.network.outputs(images)

    def add_outputs(self, features: torch.Tensor, probabilities: torch.Tensor) -> None:
        """Count a batch of generated images by their `outputs` (in the images' order: the
        sums are in float64, but the order still moves the last digits)."""
        self.moments.add(features)
        self.probabilities.append(probabilities.float())

    def add(self, images: torch.Tensor) -> None:
        self.add_outputs(*self.outputs(images))

    def results(
        self, real_batches: Callable[[], Iterable[torch.Tensor]]
    ) -> tuple[dict, float, dict]:
        score = inception_score(torch.cat(self.probabilities), self.splits)
        if self.real is None:
            real = FeatureMoments()
            for images in real_batches():
                real.add(self.network.outputs(images)[0])
            self.real = real.statistics()
            self.real_source = dict(
                computed_from=f"{real.count} test images (centre crop, {self.resolution} px)"
            )
            if self.fid_stats is not None:
                save_statistics(
                    self.fid_stats, *self.real, self.network, self.resolution, real.count
                )
                self.real_source["saved_to"] = str(self.fid_stats)
        fid = frechet_distance(*self.moments.statistics(), *self.real)
        protocol = dict(
            self.network.protocol,
            inception_score_splits=self.splits,
            fid_features="pool3 (2048)",
            fid_real_statistics=self.real_source,
        )
        return score, fid, protocol
