"""Training batches that depend only on (seed, step), and the test set in evaluation batches."""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Iterator

import torch

from gradscope.data._augment import (
    CROP_PADDING,
    AugmentationParams,
    augment_batch,
    normalize,
    sample_augmentation,
)
from gradscope.data._dataset import Dataset
from gradscope.errors import UsageError


class TrainBatches:
    """Shuffled, augmented, normalized train batches; batch(step) depends only on (seed, step).

    Epoch e uses a permutation drawn from a generator seeded with (seed, e); the augmentation
    of step k uses one seeded with (seed, k). A run resumed at step k therefore sees the same
    batches as an uninterrupted run, and models trained with the same seed see the same order.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        seed: int = 0,
        augment: bool = True,
        padding: int = CROP_PADDING,
    ):
        count = len(dataset.train_labels)
        if not isinstance(batch_size, int) or not 0 < batch_size <= count:
            raise UsageError(
                f"batch size must be between 1 and the train set size ({count}), got {batch_size}"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.padding = padding
        self.steps_per_epoch = count // batch_size  # the last partial batch is dropped
        self._mean = torch.tensor(dataset.mean, dtype=torch.float32, device=dataset.device)
        self._std = torch.tensor(dataset.std, dtype=torch.float32, device=dataset.device)
        self._cached_epoch = None  # (epoch, permutation) of the last epoch asked for

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order (int64 [N], on the data's device) in which epoch `epoch` visits the samples."""
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            generator = self._generator("epoch", epoch)
            order = torch.randperm(
                len(self.dataset.train_labels), generator=generator, device=generator.device
            )
            self._cached_epoch = (epoch, order)
        return self._cached_epoch[1]

    def indices(self, step: int) -> torch.Tensor:
        """The train-set indices (int64 [B]) of batch `step`."""
        try:
            step = operator.index(step)
        except TypeError as error:
            raise UsageError(f"step must be a non-negative int, got {step!r}") from error
        if step < 0:
            raise UsageError(f"step must be a non-negative int, got {step}")
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]

    def augmentation(self, step: int) -> AugmentationParams:
        """The crop offsets and flips that batch `step` uses."""
        generator = self._generator("augment", step)
        return sample_augmentation(self.batch_size, self.padding, generator)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `step`: float32 normalized images [B, 3, H, W] and int64 labels [B]."""
        return self.rank_batch(step, 0, 1)

    def rank_batch(self, step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank `rank`'s slice of batch `step` when `world` ranks share it: rows
        [rank * B / world, (rank + 1) * B / world) of `batch(step)`, images and augmentation
        alike, made without the other ranks' rows."""
        if world < 1 or not 0 <= rank < world or self.batch_size % world:
            raise UsageError(
                f"a batch of {self.batch_size} cannot be split evenly over {world} ranks "
                f"(rank {rank}); pick a batch size divisible by the number of ranks"
            )
        rows = slice(rank * self.batch_size // world, (rank + 1) * self.batch_size // world)
        index = self.indices(step)[rows]
        images = self.dataset.train_images.index_select(0, index)  # much faster than [index]
        if self.augment:
            params = AugmentationParams(*(part[rows] for part in self.augmentation(step)))
            images = augment_batch(images, params, self.padding)
        x = normalize(images, self._mean, self._std)
        return x, self.dataset.train_labels.index_select(0, index)

    def _generator(self, stream: str, index: int) -> torch.Generator:
        """A generator on the data's device seeded from (seed, stream, index)."""
        key = f"{self.seed}/{stream}/{index}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        return torch.Generator(device=self.dataset.device).manual_seed(seed)


def eval_subset_stride(test_count: int, limit: int | None) -> int:
    """The stride of the test subset of at most `limit` images: every k-th image, k >= 1.

    A stride rather than the first `limit` images, because folder copies list the test set
    class by class; the same images for every model and every evaluation.
    """
    if limit is None or limit >= test_count:
        return 1
    return math.ceil(test_count / limit)


def eval_batches(
    dataset: Dataset, batch_size: int = 500, limit: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test set in order, normalized and not augmented, as (float32 [B,3,H,W], int64 [B]).

    With `limit`, only every k-th test image (`eval_subset_stride`), at most `limit` of them.
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UsageError(f"batch size must be a positive int, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise UsageError(
            f"the evaluation subset must be a positive number of images, got {limit!r}"
        )
    return _test_batches(dataset, batch_size, eval_subset_stride(len(dataset.test_labels), limit))


def _test_batches(
    dataset: Dataset, batch_size: int, stride: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield every `stride`-th normalized test image in order, `batch_size` images at a time."""
    mean = torch.tensor(dataset.mean, dtype=torch.float32, device=dataset.device)
    std = torch.tensor(dataset.std, dtype=torch.float32, device=dataset.device)
    images_all, labels_all = dataset.test_images, dataset.test_labels
    if stride > 1:
        images_all, labels_all = images_all[::stride], labels_all[::stride]
    for start in range(0, len(labels_all), batch_size):
        images = images_all[start : start + batch_size]
        labels = labels_all[start : start + batch_size]
        yield normalize(images, mean, std), labels
