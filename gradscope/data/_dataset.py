"""The Dataset container (uint8 images and int64 labels on one device) and array helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torchvision.transforms.v2 import functional as TF

from gradscope.errors import UsageError

RESIZE_CHUNK = 2048  # images resized per call; bounds the float working memory
STATS_CHUNK = 8192  # images reduced per call when computing mean/std


@dataclass
class Dataset:
    """A labelled image dataset held whole as tensors on one device (airbench style)."""

    name: str  # "cifar10", "cifar100", "synthetic", or the absolute path of a local copy
    train_images: torch.Tensor  # uint8 [N, 3, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor  # uint8 [M, 3, H, W]
    test_labels: torch.Tensor  # int64 [M]
    classes: list[str]  # class names; label i is classes[i]
    mean: tuple[float, float, float]  # per-channel mean used for normalization, [0, 1] units
    std: tuple[float, float, float]  # per-channel std used for normalization, [0, 1] units
    synthetic: bool = False  # True for generated data (smoke runs, demos)

    def __post_init__(self):
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            shape = tuple(images.shape)
            if not (images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3):
                raise UsageError(
                    f"{self.name}: {split} images must be uint8 [N, 3, H, W], got "
                    f"{images.dtype} {shape}"
                )
            if not (labels.dtype == torch.int64 and labels.shape == images.shape[:1]):
                raise UsageError(
                    f"{self.name}: {split} labels must be int64 [{shape[0]}], got "
                    f"{labels.dtype} {tuple(labels.shape)}"
                )
        if self.train_images.shape[2:] != self.test_images.shape[2:]:
            raise UsageError(
                f"{self.name}: train images are {tuple(self.train_images.shape[2:])} and test "
                f"images {tuple(self.test_images.shape[2:])}; resize them to one size"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 .. num_classes - 1)."""
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width in pixels."""
        return tuple(self.train_images.shape[2:])

    @property
    def device(self) -> torch.device:
        """The device holding the tensors."""
        return self.train_images.device

    def to(self, device) -> Dataset:
        """The same dataset with its tensors on `device`."""
        return replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
        )

    def resized(self, size: tuple[int, int]) -> Dataset:
        """The same dataset with every image resized to `size` (H, W), antialiased."""
        return replace(
            self,
            train_images=resize_images(self.train_images, size),
            test_images=resize_images(self.test_images, size),
        )


def as_image_size(image_size) -> tuple[int, int] | None:
    """Normalize an image size given as None, an int (square) or an (H, W) pair."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(side, int) and side > 0 for side in image_size)
    ):
        raise UsageError(
            f"image size must be a positive int or a pair (H, W) of them, got {image_size!r}"
        )
    return (image_size[0], image_size[1])


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 images [N, 3, H, W] to `size` (H, W) with antialiasing, in chunks."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    chunks = [TF.resize(chunk, list(size), antialias=True) for chunk in images.split(RESIZE_CHUNK)]
    return torch.cat(chunks) if chunks else images.new_empty((0, 3, *size))


def channel_mean_std(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, 3, H, W], in [0, 1] units."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(STATS_CHUNK):
        pixels = chunk.to(torch.float32) / 255
        total += pixels.sum(dim=(0, 2, 3)).double().cpu()
        total_sq += pixels.square().sum(dim=(0, 2, 3)).double().cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    if count == 0:
        raise UsageError("cannot compute mean/std of an empty train set")
    mean = total / count
    # floor at one intensity level so a constant channel cannot divide by zero when normalizing
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1 / 255)
    return tuple(mean.tolist()), tuple(std.tolist())
