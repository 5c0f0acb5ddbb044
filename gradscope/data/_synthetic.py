"""A generated dataset with learnable class structure (coloured stripes, noise) for smoke runs."""

from __future__ import annotations

import math

import torch

from gradscope.data._dataset import Dataset, channel_mean_std

SYNTHETIC_CLASSES = 10  # classes; class c has its own colour, stripe angle and stripe frequency
SYNTHETIC_TRAIN = 5000  # train images (500 per class)
SYNTHETIC_TEST = 1000  # test images (100 per class)
SYNTHETIC_SIZE = (32, 32)  # pixels (H, W) unless an image size is asked for
SYNTHETIC_SEED = 0  # generator seed; the data is the same on every machine and device
STRIPE_CONTRAST = 0.35  # amplitude of the stripes around mid-grey, in [0, 1] intensity units
NOISE_STD = 0.15  # per-pixel Gaussian noise, in [0, 1] intensity units
BRIGHTNESS_JITTER = 0.15  # per-image brightness offset drawn from +-this, in [0, 1] units


def make_synthetic(image_size: tuple[int, int] | None = None) -> Dataset:
    """Generate the deterministic synthetic dataset on CPU (Dataset.synthetic is True)."""
    height, width = image_size or SYNTHETIC_SIZE
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    train_images, train_labels = _generate(SYNTHETIC_TRAIN, height, width, generator)
    test_images, test_labels = _generate(SYNTHETIC_TEST, height, width, generator)
    mean, std = channel_mean_std(train_images)
    return Dataset(
        name="synthetic",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=[f"pattern{c}" for c in range(SYNTHETIC_CLASSES)],
        mean=mean,
        std=std,
        synthetic=True,
    )


def _generate(count: int, height: int, width: int, generator: torch.Generator):
    """`count` uint8 images [count, 3, H, W] of stripes; colour, angle and period give the class."""
    labels = torch.arange(count) % SYNTHETIC_CLASSES
    labels = labels[torch.randperm(count, generator=generator)]
    classes = torch.arange(SYNTHETIC_CLASSES, dtype=torch.float32)
    hue = classes / SYNTHETIC_CLASSES  # evenly spaced hues: one colour per class
    colours = torch.stack([_hue_channel(hue, shift) for shift in (0.0, 1 / 3, 2 / 3)], dim=1)
    angles = classes * math.pi / SYNTHETIC_CLASSES  # stripe orientations 18 degrees apart
    frequencies = 2.0 + (classes % 3)  # stripe periods per image side: 2, 3 or 4

    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    angle = angles[labels].view(-1, 1, 1)
    phase = 2 * math.pi * torch.rand(count, 1, 1, generator=generator)  # stripes shift per image
    waves = torch.sin(
        2 * math.pi * frequencies[labels].view(-1, 1, 1) * (xs * angle.cos() + ys * angle.sin())
        + phase
    )  # [count, H, W]
    colour = colours[labels].view(-1, 3, 1, 1)
    brightness = BRIGHTNESS_JITTER * (2 * torch.rand(count, 1, 1, 1, generator=generator) - 1)
    pixels = torch.randn(count, 3, height, width, generator=generator).mul_(NOISE_STD)
    pixels.addcmul_(waves.unsqueeze(1), STRIPE_CONTRAST * (2 * colour - 1)).add_(0.5 + brightness)
    images = pixels.clamp_(0, 1).mul_(255).round_().to(torch.uint8)  # in place: 15M floats
    return images, labels.to(torch.int64)


def _hue_channel(hue: torch.Tensor, shift: float) -> torch.Tensor:
    """One RGB channel in [0, 1] of fully saturated colours with the given hues."""
    return 0.5 + 0.5 * torch.cos(2 * math.pi * (hue - shift))
