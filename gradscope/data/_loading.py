"""Loading a dataset by name or path: CIFAR (torchvision), local copies, generated images."""

from __future__ import annotations

import os
from pathlib import Path

from gradscope.data._cifar import (
    CIFAR_LAYOUTS,
    download_cifar,
    find_cifar_folder,
    read_cifar_folder,
)
from gradscope.data._dataset import Dataset, as_image_size
from gradscope.data._device import resolve_device
from gradscope.data._folder import find_split_dirs, load_image_folder
from gradscope.data._synthetic import make_synthetic
from gradscope.errors import UsageError

DATASET_NAMES = ("cifar10", "cifar100", "synthetic")  # specs that are names, not paths


def data_root(root=None) -> Path:
    """Where named datasets are downloaded: `root`, else $GRADSCOPE_DATA, else the cache."""
    if root is not None:
        return Path(root).expanduser()
    configured = os.environ.get("GRADSCOPE_DATA")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "gradscope" / "datasets"


def load_dataset(spec="cifar10", root=None, device="cpu", image_size=None) -> Dataset:
    """Load a dataset whole onto `device` as uint8 images and int64 labels.

    `spec` is "cifar10" or "cifar100" (torchvision download into `root`), "synthetic"
    (generated, deterministic), or a path to a local copy: a folder holding torchvision's
    cifar-10-batches-py / cifar-100-python (or that folder itself), or an ImageFolder tree
    with train/ and test/ (or val/) class folders. `image_size` (int or (H, W)) resizes
    every image; ImageFolder trees of mixed sizes need it.
    """
    device = resolve_device(device)
    size = as_image_size(image_size)
    if spec in ("cifar10", "cifar100"):
        dataset = download_cifar(spec, data_root(root))
    elif spec == "synthetic":
        dataset = make_synthetic(size)
    else:
        dataset = _load_local(Path(spec).expanduser(), size)
    if size is not None and dataset.image_size != size:
        dataset = dataset.resized(size)
    return dataset.to(device)


def _load_local(path: Path, image_size: tuple[int, int] | None) -> Dataset:
    """Load the local copy at `path`, whichever supported layout it has."""
    if not path.exists():
        raise UsageError(
            f"no dataset {str(path)!r}: expected one of {', '.join(DATASET_NAMES)} "
            f"or the path of a local copy"
        )
    cifar = find_cifar_folder(path)
    if cifar is not None:
        name, folder = cifar
        return read_cifar_folder(name, folder, str(path.resolve()))
    if find_split_dirs(path) is not None:
        return load_image_folder(path, image_size)
    found = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
    cifar_folders = " or ".join(f"{layout.folder}/" for layout in CIFAR_LAYOUTS.values())
    raise UsageError(
        f"{path} is not a dataset layout gradscope reads. Expected a folder holding "
        f"{cifar_folders} (as torchvision downloads them), that folder itself, or an "
        f"ImageFolder tree with train/<class>/<image> and test/<class>/<image> (or val/). "
        f"Found: {shown or ('a file' if path.is_file() else 'an empty folder')}"
    )
