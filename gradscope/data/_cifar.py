"""CIFAR-10/100: torchvision's download into a root folder, and reading the pickled batches."""

from __future__ import annotations

import http.client
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

from gradscope.data._dataset import Dataset
from gradscope.data.constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from gradscope.errors import UsageError


@dataclass(frozen=True)
class CifarLayout:
    """Where torchvision's pickled CIFAR batches keep their arrays and names."""

    title: str  # human name, for messages
    folder: str  # the folder torchvision extracts the batches into
    train_files: tuple[str, ...]  # pickles holding the train split, in order
    test_files: tuple[str, ...]  # pickles holding the test split
    meta_file: str  # pickle holding the class names
    labels_key: str  # key of the label list in each batch
    names_key: str  # key of the class-name list in the meta pickle
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str  # name of the torchvision.datasets class that downloads it


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        labels_key="labels",
        names_key="label_names",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        torchvision_class="CIFAR10",
    ),
    "cifar100": CifarLayout(
        title="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        labels_key="fine_labels",
        names_key="fine_label_names",
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        torchvision_class="CIFAR100",
    ),
}
CIFAR_SIDE = 32  # pixels; CIFAR images are 32x32 RGB, stored as 3072 bytes (R plane, G, B)


def find_cifar_folder(path: Path) -> tuple[str, Path] | None:
    """The (name, batches folder) of the CIFAR copy at `path` (the folder or its parent), if any."""
    for name, layout in CIFAR_LAYOUTS.items():
        if path.name == layout.folder and path.is_dir():
            return name, path
        if (path / layout.folder).is_dir():
            return name, path / layout.folder
    return None


def read_cifar_folder(name: str, folder: Path, dataset_name: str) -> Dataset:
    """Read torchvision's pickled CIFAR batches from `folder` into a CPU Dataset."""
    layout = CIFAR_LAYOUTS[name]
    expected = (*layout.train_files, *layout.test_files, layout.meta_file)
    missing = [file for file in expected if not (folder / file).is_file()]
    if missing:
        raise UsageError(
            f"{folder} is not a complete {layout.title} copy: missing {', '.join(missing)} "
            f"(torchvision's {layout.folder} holds {', '.join(expected)})"
        )
    train_images, train_labels = _read_batches(folder, layout.train_files, layout)
    test_images, test_labels = _read_batches(folder, layout.test_files, layout)
    meta = _read_pickle(folder / layout.meta_file)
    if layout.names_key not in meta:
        raise UsageError(f"{folder / layout.meta_file} has no {layout.names_key!r} entry")
    classes = [_as_text(label_name) for label_name in meta[layout.names_key]]
    return Dataset(
        name=dataset_name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
        mean=layout.mean,
        std=layout.std,
    )


def download_cifar(name: str, root: Path) -> Dataset:
    """Download CIFAR-10/100 into `root` with torchvision (if not there yet) and load it on CPU."""
    layout = CIFAR_LAYOUTS[name]
    dataset_class = getattr(torchvision.datasets, layout.torchvision_class)
    try:
        train = dataset_class(str(root), train=True, download=True)
        test = dataset_class(str(root), train=False, download=True)
    except (OSError, RuntimeError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise UsageError(
            f"could not download {layout.title} into {root} ({reason}). Without network, use "
            f"--data PATH for a local copy (a folder holding {layout.folder}/, or an ImageFolder "
            f"tree with train/ and test/ subfolders), or --data synthetic for a smoke run"
        ) from error
    return Dataset(
        name=name,
        train_images=_hwc_to_chw(train.data),
        train_labels=torch.as_tensor(train.targets, dtype=torch.int64),
        test_images=_hwc_to_chw(test.data),
        test_labels=torch.as_tensor(test.targets, dtype=torch.int64),
        classes=list(train.classes),
        mean=layout.mean,
        std=layout.std,
    )


def _read_batches(folder: Path, files: tuple[str, ...], layout: CifarLayout):
    """Concatenate the images [N, 3, 32, 32] and labels [N] of several pickled batches."""
    images, labels = [], []
    for file in files:
        batch = _read_pickle(folder / file)
        if "data" not in batch or layout.labels_key not in batch:
            raise UsageError(
                f"{folder / file} lacks 'data' or {layout.labels_key!r}: not a {layout.title} batch"
            )
        data = np.asarray(batch["data"], dtype=np.uint8)
        batch_labels = np.asarray(batch[layout.labels_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIDE * CIFAR_SIDE:
            raise UsageError(f"{folder / file}: data has shape {data.shape}, expected [N, 3072]")
        if batch_labels.shape != data.shape[:1]:
            raise UsageError(f"{folder / file}: {len(batch_labels)} labels for {len(data)} images")
        images.append(torch.from_numpy(data).view(-1, 3, CIFAR_SIDE, CIFAR_SIDE))
        labels.append(torch.from_numpy(batch_labels))
    return torch.cat(images), torch.cat(labels)


def _read_pickle(path: Path) -> dict:
    """Load a CIFAR pickle (Python 2 or 3) with its keys as text."""
    try:
        with open(path, "rb") as file:
            content = pickle.load(file, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise UsageError(f"{path} is not a readable pickle ({error})") from error
    if not isinstance(content, dict):
        raise UsageError(f"{path} holds a {type(content).__name__}, expected a dict")
    return {_as_text(key): value for key, value in content.items()}


def _as_text(value) -> str:
    """Decode bytes (as Python 2 pickles store strings) to str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _hwc_to_chw(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] (torchvision's CIFAR .data) to a contiguous uint8 [N, 3, H, W] tensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
