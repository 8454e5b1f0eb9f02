"""What the op tests share: random inputs, where each implementation runs, and the tolerance rule
(docs/DESIGN.md, "Testing")."""

from __future__ import annotations

from typing import Optional, Sequence

import pytest
import torch

from attngan import backend

CPU = torch.device("cpu")
# A fused kernel's relative error against the float64 reference, float32 inputs.
FP32_LIMIT = 2e-5


def triton_device() -> torch.device:
    """Where the unmarked tests run Triton: compiled on a GPU, else the CPU interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_for(impl: str) -> torch.device:
    return triton_device() if impl == "triton" else CPU


def require(op: str, impl: str, device: Optional[torch.device] = None) -> torch.device:
    """The device `impl` of `op` runs on in these tests; skips (with the reason) where it cannot."""
    device = device_for(impl) if device is None else torch.device(device)
    reason = backend.unavailable_reason(op, impl, device)
    if reason is not None:
        pytest.skip(reason)
    return device


def _lengths(batch: int, num_words: int, lengths: Optional[Sequence[int]]) -> torch.Tensor:
    """The given lengths, or random ones of which the first is L and the last 1 (B > 1)."""
    if lengths is not None:
        return torch.tensor(lengths)
    drawn = torch.randint(1, num_words + 1, (batch,))
    drawn[0] = num_words
    if batch > 1:
        drawn[-1] = 1
    return drawn


def damsm_inputs(
    num_images: int,
    num_captions: int,
    dim: int,
    num_words: int,
    num_regions: int,
    *,
    lengths: Optional[Sequence[int]] = None,
    dtype=torch.float64,
    device=CPU,
    scale: Optional[float] = None,
):
    """words `[Bc, D, L]`, lengths `[Bc]`, regions `[Bi, D, R]`. Features N(0, 1) x D^-1/4 by
    default, so that s = v^T e has unit spread (softmaxes not one-hot); ragged lengths."""
    scale = dim**-0.25 if scale is None else scale
    words = torch.randn(num_captions, dim, num_words, dtype=torch.float64) * scale
    regions = torch.randn(num_images, dim, num_regions, dtype=torch.float64) * scale
    return (
        words.to(device, dtype),
        _lengths(num_captions, num_words, lengths).to(device),
        regions.to(device, dtype),
    )


def word_attention_inputs(
    batch: int,
    channels: int,
    num_words: int,
    height: int,
    width: int,
    *,
    lengths: Optional[Sequence[int]] = None,
    dtype=torch.float64,
    device=CPU,
):
    """query `[B, C, H, W]`, words `[B, C, L]` N(0, 1), lengths `[B]` (ragged)."""
    query = torch.randn(batch, channels, height, width, dtype=torch.float64)
    words = torch.randn(batch, channels, num_words, dtype=torch.float64)
    return (
        query.to(device, dtype),
        words.to(device, dtype),
        _lengths(batch, num_words, lengths).to(device),
    )


# Word attention (B, C, L, H, W, lengths): odd sizes, L = 1 / 5 / 17 / 18 / 31 / 32, R = 289,
# B = 1, ragged lengths.
WORD_ATTENTION_SHAPES = [
    (1, 3, 1, 2, 3, [1]),
    (3, 5, 5, 4, 5, [5, 2, 1]),
    (2, 8, 18, 17, 17, [18, 7]),
    (2, 6, 17, 3, 11, [3, 17]),
    (3, 16, 31, 5, 7, [31, 1, 12]),
    (2, 4, 32, 6, 6, [32, 20]),
]


def relative_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    """max |value - truth| / max |truth|. A truth of zeros (the gradient through a one-word
    softmax) takes exact zeros: its scale is clamped at 1e-12."""
    scale = truth.detach().abs().max().double().clamp(min=1e-12)
    return float((value.detach().double() - truth.detach().double()).abs().max() / scale)


def assert_within_tolerance(
    name: str,
    value: torch.Tensor,
    truth: torch.Tensor,
    baseline: Optional[torch.Tensor] = None,
    floor: float = 0.0,
    limit: float = FP32_LIMIT,
) -> None:
    """The tolerance rule, against a float64 truth on the same (rounded) inputs: without a
    baseline (float32), relative error < limit; with one, the flash-attention rule: the error is
    at most twice that of the PyTorch reference run in the same dtype (`baseline`), plus a
    floor."""
    error = relative_error(value, truth)
    bound = limit if baseline is None else 2 * relative_error(baseline, truth) + floor
    assert error <= bound, f"{name}: relative error {error:.3g} above {bound:.3g}"


def assert_cpu_lengths_cost_no_synchronisation(run, lengths: torch.Tensor, forbid) -> None:
    """run(lengths) -> outputs of an op on GPU features: with `lengths` on the CPU nothing waits
    for the GPU (`forbid`, the no_gpu_synchronisation fixture, raises on any synchronisation),
    and the outputs equal those with the lengths on the GPU."""
    expected = run(lengths.cuda())  # also compiles the kernels, outside the debug mode
    with forbid():
        got = run(lengths)
    for want, value in zip(expected, got):  # (atomic sums and cuBLAS may add in another order)
        torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-5)
