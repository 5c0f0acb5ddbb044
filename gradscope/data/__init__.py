"""Datasets as uint8 tensors on the device, and deterministic augmented training batches."""

from gradscope.data._augment import (
    AugmentationParams,
    augment_batch,
    normalize,
    sample_augmentation,
)
from gradscope.data._batches import TrainBatches, eval_batches, eval_subset_stride
from gradscope.data._dataset import Dataset
from gradscope.data._device import resolve_device
from gradscope.data._loading import data_root, load_dataset

__all__ = [
    "AugmentationParams",
    "Dataset",
    "TrainBatches",
    "augment_batch",
    "data_root",
    "eval_batches",
    "eval_subset_stride",
    "load_dataset",
    "normalize",
    "resolve_device",
    "sample_augmentation",
]
