"""ImageFolder trees (train/ and test/ or val/ of class folders): scan, decode once, cache."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from gradscope.data._cache import cache_path, load_cached, save_cached
from gradscope.data._dataset import Dataset, channel_mean_std
from gradscope.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from gradscope.errors import UsageError

# image files read, as torchvision ImageFolder does; other files in class folders are ignored
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".ppm", ".pgm", ".tif")
TORCHVISION_DECODES = (".jpg", ".jpeg", ".png", ".webp")  # other extensions are decoded with PIL
TEST_SPLIT_NAMES = ("test", "val")  # accepted names of the held-out split, in order of preference
TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"
DECODE_CHUNK = 1000  # files decoded per worker task
PARALLEL_MIN_FILES = 5000  # below this, decode in-process: starting workers would cost more
DECODE_WORKERS = min(2, os.cpu_count() or 1)  # worker processes decoding in parallel


def find_split_dirs(path: Path) -> tuple[Path, Path] | None:
    """The (train, test) folders of an ImageFolder tree at `path`, if it has that layout."""
    if not (path / "train").is_dir():
        return None
    for name in TEST_SPLIT_NAMES:
        if (path / name).is_dir():
            return path / "train", path / name
    return None


def load_image_folder(path: Path, image_size: tuple[int, int] | None) -> Dataset:
    """Decode an ImageFolder tree into a CPU Dataset, reusing the decoded cache when it matches."""
    train_dir, test_dir = find_split_dirs(path)
    classes, train_files, train_labels, train_stats = scan_split(train_dir)
    test_classes, test_files, test_labels, test_stats = scan_split(test_dir)
    if test_classes != classes:
        raise UsageError(
            f"train and test need the same class folders, but {train_dir} and {test_dir} differ: "
            f"only in {train_dir.name}/: {sorted(set(classes) - set(test_classes)) or 'none'}; "
            f"only in {test_dir.name}/: {sorted(set(test_classes) - set(classes)) or 'none'}"
        )
    fingerprint = tuple(a + b for a, b in zip(train_stats[:2], test_stats[:2], strict=True)) + (
        max(train_stats[2], test_stats[2]),
    )
    cache_file = cache_path(path, fingerprint, image_size)
    arrays = load_cached(cache_file)
    if arrays is None:
        images = decode_files(train_files + test_files, image_size)
        train_images = images[: len(train_files)]
        if tuple(classes) == CIFAR10_CLASSES:
            mean, std = CIFAR10_MEAN, CIFAR10_STD  # an ImageFolder copy of CIFAR-10
        else:
            mean, std = channel_mean_std(train_images)
        arrays = {
            "train_images": train_images,
            "train_labels": torch.tensor(train_labels, dtype=torch.int64),
            "test_images": images[len(train_files) :],
            "test_labels": torch.tensor(test_labels, dtype=torch.int64),
            "classes": classes,
            "mean": tuple(mean),
            "std": tuple(std),
        }
        save_cached(cache_file, arrays)
    return Dataset(name=str(path.resolve()), **arrays)


def scan_split(split_dir: Path) -> tuple[list[str], list[Path], list[int], tuple[int, int, int]]:
    """Classes, image files, labels and a (count, bytes, newest mtime ns) fingerprint of a split.

    The newest mtime covers the class folders too, so moving a file between classes (which
    keeps its own mtime) still changes the fingerprint.
    """
    classes = sorted(
        entry.name
        for entry in os.scandir(split_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise UsageError(
            f"{split_dir} has no class folders: expected {split_dir}/<class>/<image> "
            f"(image files: {', '.join(IMAGE_EXTENSIONS)})"
        )
    files, labels = [], []
    total_bytes, newest_mtime = 0, 0
    for label, name in enumerate(classes):
        newest_mtime = max(newest_mtime, (split_dir / name).stat().st_mtime_ns)
        entries = sorted(
            (
                entry
                for entry in os.scandir(split_dir / name)
                if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
            ),
            key=lambda entry: entry.name,
        )
        if not entries:
            raise UsageError(
                f"class folder {split_dir / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        for entry in entries:
            stat = entry.stat()
            total_bytes += stat.st_size
            newest_mtime = max(newest_mtime, stat.st_mtime_ns)
            files.append(Path(entry.path))
            labels.append(label)
    return classes, files, labels, (len(files), total_bytes, newest_mtime)


def decode_file(path: Path, image_size: tuple[int, int] | None) -> torch.Tensor:
    """Decode one image file to uint8 RGB [3, H, W], resized to `image_size` if given."""
    if path.suffix.lower() in TORCHVISION_DECODES:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    else:
        with Image.open(path) as opened:
            image = TF.pil_to_tensor(opened.convert("RGB"))
    if image_size is not None and tuple(image.shape[1:]) != image_size:
        image = TF.resize(image, list(image_size), antialias=True)
    return image


def decode_files(files: list[Path], image_size: tuple[int, int] | None) -> torch.Tensor:
    """Decode image files into one uint8 [N, 3, H, W] tensor, in chunks on worker processes."""
    chunks = _DecodeChunks(files, image_size)
    workers = DECODE_WORKERS if len(files) >= PARALLEL_MIN_FILES else 0
    loader = DataLoader(chunks, batch_size=None, num_workers=workers, worker_init_fn=_one_thread)
    images = None
    with tqdm(total=len(files), desc="decoding images", unit="img", disable=None) as progress:
        for index, (chunk_images, problem) in enumerate(loader):
            if problem is not None:
                raise UsageError(problem)
            first_file = chunks.chunk_files(index)[0]
            if images is None:
                reference_file = first_file
                images = torch.empty((len(files), *chunk_images.shape[1:]), dtype=torch.uint8)
            elif chunk_images.shape[1:] != images.shape[1:]:
                raise UsageError(
                    _size_mismatch(reference_file, images.shape, first_file, chunk_images.shape)
                )
            start = index * DECODE_CHUNK
            images[start : start + len(chunk_images)] = chunk_images
            progress.update(len(chunk_images))
    return images


class _DecodeChunks(torch.utils.data.Dataset):
    """Chunks of image files; item i is (uint8 [n, 3, H, W] or None, problem message or None)."""

    def __init__(self, files: list[Path], image_size: tuple[int, int] | None):
        self.files = files
        self.image_size = image_size

    def __len__(self) -> int:
        return -(-len(self.files) // DECODE_CHUNK)

    def chunk_files(self, index: int) -> list[Path]:
        return self.files[index * DECODE_CHUNK : (index + 1) * DECODE_CHUNK]

    def __getitem__(self, index: int):
        # Problems travel back as messages: an exception raised in a worker reaches the
        # user wrapped in a worker traceback, while a message becomes one clean UsageError.
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec, which is not a
            # dependency; they still work, so do not repeat that warning for every file
            warnings.filterwarnings("ignore", TORCHVISION_DEPRECATION, DeprecationWarning)
            return self._decode_chunk(index)

    def _decode_chunk(self, index: int):
        images = []
        for path in self.chunk_files(index):
            try:
                images.append(decode_file(path, self.image_size))
            except (RuntimeError, OSError, ValueError, UnidentifiedImageError) as error:
                return None, f"cannot decode {path} ({error}); remove or replace that file"
            if images[-1].shape != images[0].shape:
                first = self.chunk_files(index)[0]
                return None, _size_mismatch(first, images[0].shape, path, images[-1].shape)
        return torch.stack(images), None


def _size_mismatch(first_file: Path, first_shape, other_file: Path, other_shape) -> str:
    """The message for images of different sizes without an image size to resize them to."""
    first_size = "x".join(map(str, first_shape[-2:]))
    other_size = "x".join(map(str, other_shape[-2:]))
    return (
        f"images differ in size ({first_file} is {first_size}, {other_file} is {other_size}); "
        f"pass --image-size N (in Python, image_size=N or (H, W)) to resize them all to one size"
    )


def _one_thread(_worker_id: int) -> None:
    """Keep each decoding worker on one thread, so workers do not fight over the cores."""
    torch.set_num_threads(1)
