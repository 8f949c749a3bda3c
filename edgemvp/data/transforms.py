"""Tensor transforms that fit raw images to a model's :class:`~edgemvp.spec.InputSpec`.

Images travel as uint8 ``(B, C, H, W)`` tensors until the last step, which converts channels, scales to
[0, 1] and normalises. Augmentation (random crop with zero padding, optional horizontal flip) is batched
and driven by an explicit ``torch.Generator`` so runs are reproducible.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from edgemvp.spec import InputSpec

Fit = Literal["pad", "resize", "resize-crop"]
_LUMA = (0.299, 0.587, 0.114)
PAD_MARGIN = 8  # a larger input (e.g. 64 px for an ImageNet base) is filled by resizing, not left mostly black


def fit_images(x: torch.Tensor, size: int, mode: Fit, crop_pct: float = 1.0,
               interpolation: str = "bilinear") -> torch.Tensor:
    """Bring uint8 images to ``size`` x ``size``.

    Args:
        x: uint8 ``(B, C, H, W)``.
        size: Target side in pixels.
        mode: ``pad`` centres images a few pixels smaller on a zero canvas (Fashion-MNIST's 28 px in 32, the
            MNIST convention; at most :data:`PAD_MARGIN` px short on a side) and resizes others, ``resize`` stretches
            to the square, ``resize-crop`` resizes the shorter side to ``size / crop_pct`` and centre-crops
            ``size`` (natural photos; timm's eval transform).
        crop_pct: See ``resize-crop``.
        interpolation: ``bilinear`` or ``bicubic`` (antialiased).

    Returns:
        uint8 ``(B, C, size, size)``.
    """
    _, _, h, w = x.shape
    if (h, w) == (size, size):
        return x
    if mode == "pad" and h <= size and w <= size and size - min(h, w) <= PAD_MARGIN:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top))
    if mode == "resize-crop":
        scale = size / crop_pct / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = _resize(x, nh, nw, interpolation)
        top, left = (nh - size) // 2, (nw - size) // 2
        return x[:, :, top : top + size, left : left + size]
    return _resize(x, size, size, interpolation)


def _resize(x: torch.Tensor, h: int, w: int, interpolation: str = "bilinear") -> torch.Tensor:
    y = F.interpolate(x.float(), size=(h, w), mode=interpolation, antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def augment(x: torch.Tensor, generator: torch.Generator, hflip: bool, pad: int) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` pixels, and a random horizontal flip when allowed.

    Args:
        x: uint8 ``(B, C, S, S)``.
        generator: Source of randomness.
        hflip: Whether a mirror image keeps its label (not for characters or digits).
        pad: Padding on each side before cropping back to ``S``.

    Returns:
        Augmented uint8 ``(B, C, S, S)``.
    """
    return apply_augment(x, *draw_augment(len(x), generator, hflip, pad), pad)


def draw_augment(batch: int, generator: torch.Generator, hflip: bool, pad: int
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The random part of :func:`augment`: crop offsets ``(B, 2)`` and flips ``(B,)`` (None where not used), in
    the order :func:`augment` draws them, so a loader can draw them in one process and apply them in another."""
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator) if pad > 0 else None
    flips = torch.rand(batch, generator=generator) < 0.5 if hflip else None
    return offsets, flips


def apply_augment(x: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None, pad: int
                  ) -> torch.Tensor:
    """The deterministic part of :func:`augment`: crop at ``offsets`` after zero padding, flip where ``flips``."""
    b, _, s, _ = x.shape
    if offsets is not None:
        padded = F.pad(x, (pad, pad, pad, pad))
        span = torch.arange(s)
        rows = (offsets[:, :1] + span)[:, :, None]  # (B, S, 1)
        cols = (offsets[:, 1:] + span)[:, None, :]  # (B, 1, S)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flips is not None:
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return x


def to_input(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Convert uint8 images to the model's normalised float input.

    Args:
        x: uint8 ``(B, C, S, S)`` with C = 1 or 3, already at ``spec.size``.
        spec: The model's input spec.

    Returns:
        float32 ``(B, spec.channels, S, S)``.
    """
    y = x.float().div_(255.0)
    if y.shape[1] == 1 and spec.channels == 3:
        y = y.expand(-1, 3, -1, -1)
    elif y.shape[1] == 3 and spec.channels == 1:
        luma = torch.tensor(_LUMA, dtype=y.dtype).view(1, 3, 1, 1)
        y = (y * luma).sum(1, keepdim=True)
    mean = torch.tensor(spec.mean, dtype=y.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=y.dtype).view(1, -1, 1, 1)
    return (y - mean) / std
