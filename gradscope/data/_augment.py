"""Batched augmentation on the device (zero-pad, random crop, random flip) and normalization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

CROP_PADDING = 4  # pixels of zero padding on each side before the random crop (He et al., 2016)


class AugmentationParams(NamedTuple):
    """The random choices for one batch: crop offsets into the padded image, and flips."""

    top: torch.Tensor  # int64 [B], row offset of the crop in the padded image, 0 .. 2 * padding
    left: torch.Tensor  # int64 [B], column offset of the crop in the padded image
    flip: torch.Tensor  # bool [B], mirror the crop left-right


def sample_augmentation(
    batch_size: int, padding: int, generator: torch.Generator
) -> AugmentationParams:
    """Draw crop offsets and flips for a batch from `generator` (on the generator's device)."""
    device = generator.device
    top = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=device)
    flip = torch.rand(batch_size, generator=generator, device=device) < 0.5
    return AugmentationParams(top, left, flip)


def augment_batch(
    images: torch.Tensor, params: AugmentationParams, padding: int = CROP_PADDING
) -> torch.Tensor:
    """Zero-pad images [B, C, H, W] by `padding`, crop back to H x W at the offsets, then flip."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))  # [B, C, H + 2p, W + 2p]
    padded_width = width + 2 * padding
    rows = params.top[:, None] + torch.arange(height, device=images.device)  # [B, H]
    cols = params.left[:, None] + torch.arange(width, device=images.device)  # [B, W]
    cols = torch.where(params.flip[:, None], cols.flip(1), cols)  # output col j reads col W-1-j
    flat_index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(batch, 1, -1)
    flat_index = flat_index.expand(batch, channels, height * width)  # [B, C, H * W]
    cropped = padded.flatten(2).gather(2, flat_index)  # [B, C, H * W]
    return cropped.view(batch, channels, height, width)


def normalize(
    images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """uint8 images [B, 3, H, W] to float32 ((x / 255) - mean) / std, per channel.

    `mean` and `std` are sequences of floats or float32 tensors already on the images' device
    (the latter avoid a host-to-device copy per call).
    """
    std_tensor = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    mean_tensor = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    scale = 1 / (255 * std_tensor)
    shift = -mean_tensor / std_tensor
    return images.to(torch.float32).mul_(scale).add_(shift)
