"""Tests for gradscope.data: loading, decoding cache, deterministic batches, augmentation."""

import os
import pickle
import urllib.error
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import gradscope.data._cache
import gradscope.data._folder
from gradscope.data import (
    AugmentationParams,
    TrainBatches,
    augment_batch,
    eval_batches,
    eval_subset_stride,
    load_dataset,
    normalize,
)
from gradscope.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR100_MEAN, CIFAR100_STD
from gradscope.errors import UsageError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep every test's decoded cache in its own folder."""
    monkeypatch.setenv("GRADSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def random_pixels(seed, height, width, channels=3):
    """Deterministic random uint8 pixels [H, W, C] (or [H, W] for one channel)."""
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_image_folder(root, splits, size=(6, 5), suffix=".png"):
    """Write an ImageFolder tree {split: {class: count}}; return {(split, class, i): pixels}."""
    written = {}
    for split, counts in splits.items():
        for class_name, count in counts.items():
            (root / split / class_name).mkdir(parents=True)
            for i in range(count):
                pixels = random_pixels(len(written), *size)
                Image.fromarray(pixels).save(root / split / class_name / f"{i:03d}{suffix}")
                written[(split, class_name, i)] = pixels
    return written


def write_fake_cifar10(root, per_batch=4, test_count=6):
    """Write a tiny cifar-10-batches-py in the official pickle format; return its arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for file in files:
        count = test_count if file == "test_batch" else per_batch
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, count).tolist()
        with open(folder / file, "wb") as handle:
            pickle.dump({b"batch_label": file.encode(), b"data": data, b"labels": labels}, handle)
        arrays[file] = (data, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [name.encode() for name in CIFAR10_CLASSES]}, handle)
    return folder, arrays


# ---- ImageFolder trees ---------------------------------------------------------------------


def test_image_folder_labels_follow_sorted_class_folders_and_pixels_match(tmp_path):
    root = tmp_path / "tree"
    written = write_image_folder(
        root, {"train": {"zebra": 2, "ant": 3, "moth": 1}, "val": {"zebra": 1, "ant": 1, "moth": 2}}
    )
    ds = load_dataset(root)
    assert ds.classes == ["ant", "moth", "zebra"]
    assert ds.num_classes == 3 and ds.image_size == (6, 5) and not ds.synthetic
    assert ds.name == str(root.resolve())
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert ds.test_labels.tolist() == [0, 1, 1, 2]
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.shape == (6, 3, 6, 5)
    expected_train = [("ant", 0), ("ant", 1), ("ant", 2), ("moth", 0), ("zebra", 0), ("zebra", 1)]
    for row, (name, i) in enumerate(expected_train):
        hwc = ds.train_images[row].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(hwc, written[("train", name, i)])
    np.testing.assert_array_equal(
        ds.test_images[3].permute(1, 2, 0).numpy(), written[("val", "zebra", 0)]
    )
    # not a CIFAR-10 copy: mean/std are the train set's own, per channel
    pixels = ds.train_images.double() / 255
    np.testing.assert_allclose(ds.mean, pixels.mean(dim=(0, 2, 3)).numpy(), atol=1e-6)
    np.testing.assert_allclose(ds.std, pixels.std(dim=(0, 2, 3), correction=0).numpy(), atol=1e-6)


def test_grayscale_and_pil_only_formats_become_rgb(tmp_path):
    root = tmp_path / "tree"
    gray = random_pixels(1, 4, 4, channels=1)
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(gray).save(root / split / "a" / "gray.png")
        Image.fromarray(random_pixels(2, 4, 4)).save(root / split / "a" / "colour.bmp")
    ds = load_dataset(root)
    assert ds.train_images.shape == (2, 3, 4, 4)
    for channel in range(3):  # sorted names: colour.bmp, then gray.png
        np.testing.assert_array_equal(ds.train_images[1, channel].numpy(), gray)
    np.testing.assert_array_equal(
        ds.train_images[0].permute(1, 2, 0).numpy(), random_pixels(2, 4, 4)
    )


def test_cifar10_class_names_use_cifar10_normalization_and_jpeg_decodes(tmp_path):
    root = tmp_path / "cifar-jpg"
    counts = {name: 1 for name in CIFAR10_CLASSES}
    written = write_image_folder(
        root, {"train": counts, "test": counts}, size=(32, 32), suffix=".jpg"
    )
    ds = load_dataset(root)
    assert ds.classes == list(CIFAR10_CLASSES) and ds.mean == CIFAR10_MEAN
    # JPEG is lossy: decoded pixels are close to, not equal to, what was written
    error = (
        ds.train_images[0].permute(1, 2, 0).float()
        - torch.from_numpy(written[("train", "airplane", 0)]).float()
    )
    assert error.abs().mean() < 60


def test_mixed_sizes_need_image_size_and_are_resized_with_it(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    write_image_folder(root, {"train": {"a": 2}, "test": {"a": 1}}, size=(8, 8))
    Image.fromarray(random_pixels(9, 12, 10)).save(root / "train" / "a" / "big.png")
    with pytest.raises(UsageError, match="differ in size.*--image-size"):
        load_dataset(root)
    monkeypatch.setattr(gradscope.data._folder, "DECODE_CHUNK", 1)  # the mismatch across chunks
    with pytest.raises(UsageError, match="big.png is 12x10.*--image-size"):
        load_dataset(root)
    ds = load_dataset(root, image_size=(6, 7))
    assert ds.train_images.shape == (3, 3, 6, 7) and ds.test_images.shape == (1, 3, 6, 7)
    assert load_dataset(root, image_size=4).image_size == (4, 4)


def test_train_and_test_classes_must_match(tmp_path):
    root = tmp_path / "tree"
    write_image_folder(root, {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "eel": 1}})
    with pytest.raises(UsageError, match=r"same class folders.*\['dog'\].*\['eel'\]"):
        load_dataset(root)


def test_corrupt_image_names_the_file(tmp_path):
    root = tmp_path / "tree"
    write_image_folder(root, {"train": {"a": 1}, "test": {"a": 1}})
    (root / "train" / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="cannot decode .*broken.png"):
        load_dataset(root)


def test_parallel_decode_keeps_file_order(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    written = write_image_folder(root, {"train": {"a": 5, "b": 4}, "test": {"a": 1, "b": 2}})
    monkeypatch.setattr(gradscope.data._folder, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(gradscope.data._folder, "DECODE_WORKERS", 2)
    monkeypatch.setattr(gradscope.data._folder, "DECODE_CHUNK", 2)
    ds = load_dataset(root)
    np.testing.assert_array_equal(
        ds.train_images[7].permute(1, 2, 0).numpy(), written[("train", "b", 2)]
    )
    np.testing.assert_array_equal(
        ds.test_images[2].permute(1, 2, 0).numpy(), written[("test", "b", 1)]
    )


# ---- decoded cache -------------------------------------------------------------------------


def test_second_load_comes_from_cache_outside_the_dataset(tmp_path, monkeypatch, private_cache):
    root = tmp_path / "tree"
    write_image_folder(root, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    files_before = sorted(root.rglob("*"))
    first = load_dataset(root)
    assert sorted(root.rglob("*")) == files_before  # nothing written into the dataset
    assert len(list((private_cache / "decoded").glob("*.pt"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(gradscope.data._folder, "decode_file", no_decoding)
    second = load_dataset(root)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert (second.classes, second.mean, second.std) == (first.classes, first.mean, first.std)
    # a new file changes the fingerprint, and so does another image size: both decode again
    Image.fromarray(random_pixels(5, 6, 5)).save(root / "train" / "b" / "new.png")
    with pytest.raises(AssertionError, match="decoded although"):
        load_dataset(root)
    (root / "train" / "b" / "new.png").unlink()
    with pytest.raises(AssertionError, match="decoded although"):
        load_dataset(root, image_size=3)


def test_moving_a_file_to_another_class_invalidates_the_cache(tmp_path):
    root = tmp_path / "tree"
    write_image_folder(root, {"train": {"a": 2, "b": 1}, "test": {"a": 1, "b": 1}})
    for path in root.rglob("*"):  # everything old: only the move below makes anything new
        os.utime(path, ns=(10**18, 10**18))
    assert load_dataset(root).train_labels.tolist() == [0, 0, 1]
    (root / "train" / "a" / "000.png").rename(root / "train" / "b" / "moved.png")
    # same count, bytes and file mtimes; only the class folders' mtimes tell
    assert load_dataset(root).train_labels.tolist() == [0, 1, 1]


def test_unreadable_cache_is_reported_and_rebuilt(tmp_path, private_cache):
    root = tmp_path / "tree"
    write_image_folder(root, {"train": {"a": 1}, "test": {"a": 1}})
    first = load_dataset(root)
    (cache_file,) = (private_cache / "decoded").glob("*.pt")
    cache_file.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring unreadable cache file"):
        again = load_dataset(root)
    assert torch.equal(first.train_images, again.train_images)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the rebuilt cache reads cleanly
        assert load_dataset(root).test_labels.tolist() == [0]


def test_interrupted_cache_write_leaves_no_cache(tmp_path, monkeypatch, private_cache):
    root = tmp_path / "tree"
    write_image_folder(root, {"train": {"a": 1}, "test": {"a": 1}})

    def interrupted_save(obj, file):
        file.write(b"half a cache")
        raise KeyboardInterrupt

    monkeypatch.setattr(gradscope.data._cache.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(root)
    assert list((private_cache / "decoded").iterdir()) == []


# ---- CIFAR pickles and downloads -------------------------------------------------------------


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_fake_cifar10_batches_load_in_the_official_layout(tmp_path, point_at):
    folder, arrays = write_fake_cifar10(tmp_path / "copy")
    ds = load_dataset(folder.parent if point_at == "parent" else folder)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (6, 3, 32, 32)
    assert ds.classes == list(CIFAR10_CLASSES) and ds.mean == CIFAR10_MEAN
    data, labels = arrays["data_batch_2"]
    # row 3072 = 1024 red, 1024 green, 1024 blue, each row-major 32x32
    assert torch.equal(ds.train_images[4, 1], torch.from_numpy(data[0, 1024:2048].reshape(32, 32)))
    assert ds.train_labels[4:8].tolist() == labels
    assert ds.test_labels.tolist() == arrays["test_batch"][1]
    assert load_dataset(folder, image_size=16).train_images.shape == (20, 3, 16, 16)


def test_fake_cifar100_uses_fine_labels_and_its_own_normalization(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.random.default_rng(1).integers(0, 256, (3, 3072), dtype=np.uint8)
    for file in ("train", "test"):
        batch = {b"data": data, b"fine_labels": [5, 0, 99], b"coarse_labels": [1, 2, 3]}
        with open(folder / file, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, handle)
    ds = load_dataset(tmp_path)
    assert ds.num_classes == 100 and ds.train_labels.tolist() == [5, 0, 99]
    assert (ds.mean, ds.std) == (CIFAR100_MEAN, CIFAR100_STD)


def test_incomplete_cifar_copy_names_the_missing_files(tmp_path):
    folder, _ = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UsageError, match="missing data_batch_3"):
        load_dataset(tmp_path)


def test_download_failure_points_to_local_copies_and_synthetic(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UsageError) as caught:
        load_dataset("cifar10", root=tmp_path)
    message = str(caught.value)
    assert "could not download CIFAR-10" in message and "name resolution" in message
    assert "--data PATH" in message and "--data synthetic" in message


def test_downloaded_cifar10_goes_to_gradscope_data_and_becomes_chw(tmp_path, monkeypatch):
    calls = []
    hwc = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)

    class FakeCIFAR10:  # torchvision's attributes: .data [N, H, W, 3], .targets, .classes
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            self.data, self.targets, self.classes = hwc, [3, 1], list(CIFAR10_CLASSES)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.setenv("GRADSCOPE_DATA", str(tmp_path / "downloads"))
    ds = load_dataset("cifar10")
    assert calls == [
        (str(tmp_path / "downloads"), True, True),
        (str(tmp_path / "downloads"), False, True),
    ]
    assert ds.name == "cifar10" and ds.train_labels.tolist() == [3, 1]
    assert torch.equal(ds.train_images[1, 2], torch.from_numpy(hwc[1, :, :, 2]))


# ---- bad specs -------------------------------------------------------------------------------


def test_bad_layouts_say_what_was_expected_and_found(tmp_path):
    (tmp_path / "odd" / "pictures").mkdir(parents=True)
    (tmp_path / "odd" / "notes.txt").write_text("hi")
    expected = r"cifar-10-batches-py/.*train/.*Found: notes.txt, pictures"
    with pytest.raises(UsageError, match=expected):
        load_dataset(tmp_path / "odd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="Found: an empty folder"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(UsageError, match="no dataset .*cifar10, cifar100, synthetic"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "train_only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="Found: train"):
        load_dataset(tmp_path / "train_only")
    (tmp_path / "train_only" / "test" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no images"):
        load_dataset(tmp_path / "train_only")
    with pytest.raises(UsageError, match="image size"):
        load_dataset("synthetic", image_size=(0, 3))
    with pytest.raises(UsageError, match="device"):
        load_dataset("synthetic", device="not-a-device")


# ---- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_flagged():
    first = load_dataset("synthetic")
    assert first.synthetic and first.name == "synthetic" and first.num_classes == 10
    assert first.image_size == (32, 32) and len(first.train_labels) >= 2000
    small, small_again = (
        load_dataset("synthetic", image_size=8),
        load_dataset("synthetic", image_size=8),
    )
    assert small.image_size == (8, 8) and torch.equal(small.train_images, small_again.train_images)
    assert torch.equal(small.test_labels, small_again.test_labels)
    assert first.train_labels.bincount().tolist() == [len(first.train_labels) // 10] * 10

    # each class has its own stripe colour, so the channel covariance of an image already
    # predicts its class far above chance (10%) with a nearest-class-mean rule
    def channel_covariance(images):
        centred = images.float().flatten(2)
        centred = centred - centred.mean(dim=2, keepdim=True)
        return torch.einsum("bcp,bdp->bcd", centred, centred).flatten(1) / centred.shape[2]

    train_features = channel_covariance(first.train_images)
    centroids = torch.stack([train_features[first.train_labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(channel_covariance(first.test_images), centroids).argmin(1)
    assert (predicted == first.test_labels).float().mean() > 0.3


# ---- batches -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset():
    """A small dataset with distinct pixels, made directly as tensors (no files)."""
    from gradscope.data._dataset import Dataset

    generator = torch.Generator().manual_seed(3)
    return Dataset(
        name="tensors",
        train_images=torch.randint(0, 256, (100, 3, 8, 6), dtype=torch.uint8, generator=generator),
        train_labels=torch.arange(100) % 7,
        test_images=torch.randint(0, 256, (23, 3, 8, 6), dtype=torch.uint8, generator=generator),
        test_labels=torch.arange(23) % 7,
        classes=[str(c) for c in range(7)],
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )


def test_batches_are_a_pure_function_of_seed_and_step(small_dataset):
    batches = TrainBatches(small_dataset, batch_size=16, seed=7)
    assert batches.steps_per_epoch == 6
    x3, y3 = batches.batch(3)
    assert x3.shape == (16, 3, 8, 6) and x3.dtype == torch.float32 and y3.dtype == torch.int64
    for step in range(20):  # move the cached epoch elsewhere
        batches.batch(step)
    resumed = TrainBatches(small_dataset, batch_size=16, seed=7)
    x3_again, y3_again = resumed.batch(3)
    assert torch.equal(x3, x3_again) and torch.equal(y3, y3_again)
    assert not torch.equal(batches.batch(4)[0], x3)
    assert not torch.equal(TrainBatches(small_dataset, batch_size=16, seed=8).batch(3)[0], x3)
    # step 6 + 3 is the same position in the next epoch: another permutation
    assert not torch.equal(batches.indices(9), batches.indices(3))


def test_each_epoch_visits_each_sample_once(small_dataset):
    batches = TrainBatches(small_dataset, batch_size=10, seed=0, augment=False)
    for epoch in range(3):
        steps = range(epoch * 10, (epoch + 1) * 10)
        seen = torch.cat([batches.indices(step) for step in steps])
        assert sorted(seen.tolist()) == list(range(100))
    assert not torch.equal(batches.permutation(0), batches.permutation(1))
    index = batches.indices(12)
    x, y = batches.batch(12)
    assert torch.equal(y, small_dataset.train_labels[index])
    expected = normalize(small_dataset.train_images[index], small_dataset.mean, small_dataset.std)
    assert torch.equal(x, expected)


def reference_augment(image, top, left, flip, padding):
    """Brute force for one image [C, H, W]: zero-pad, crop at (top, left), maybe mirror."""
    height, width = image.shape[1:]
    padded = F.pad(image, (padding, padding, padding, padding))
    crop = padded[:, top : top + height, left : left + width]
    return crop.flip(-1) if flip else crop


def test_augmentation_matches_per_sample_reference(small_dataset):
    batches = TrainBatches(small_dataset, batch_size=50, seed=1)
    for step in (0, 5):
        params = batches.augmentation(step)
        index = batches.indices(step)
        expected = torch.stack(
            [
                reference_augment(small_dataset.train_images[i], int(t), int(left), bool(f), 4)
                for i, t, left, f in zip(index, params.top, params.left, params.flip, strict=True)
            ]
        )
        x, _ = batches.batch(step)
        assert torch.equal(x, normalize(expected, small_dataset.mean, small_dataset.std))
    params = batches.augmentation(0)
    assert params.top.min() >= 0 and params.top.max() <= 8 and params.flip.any()
    assert not params.flip.all() and len(set(params.left.tolist())) > 3


def test_augment_batch_on_hand_picked_offsets():
    image = torch.arange(12, dtype=torch.uint8).view(1, 1, 3, 4) + 1
    params = AugmentationParams(
        top=torch.tensor([0, 2, 1]), left=torch.tensor([0, 1, 2]), flip=torch.tensor([0, 1, 0]) > 0
    )
    out = augment_batch(image.expand(3, 1, 3, 4), params, padding=1)
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7]]  # shifted down-right
    assert out[1, 0].tolist() == [[8, 7, 6, 5], [12, 11, 10, 9], [0, 0, 0, 0]]  # up, mirrored
    assert out[2, 0].tolist() == [[2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]]  # left


def test_normalization_and_eval_batches(small_dataset):
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    x = normalize(pixels, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    expected = [(0 - 0.5) / 0.2, (0.2 - 0.4) / 0.25, (1 - 0.3) / 0.3]
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor(expected))
    chunks = list(eval_batches(small_dataset, batch_size=10))
    assert [len(y) for _, y in chunks] == [10, 10, 3]
    x_all = torch.cat([x for x, _ in chunks])
    expected_all = normalize(small_dataset.test_images, small_dataset.mean, small_dataset.std)
    assert torch.equal(x_all, expected_all)
    assert torch.equal(torch.cat([y for _, y in chunks]), small_dataset.test_labels)


def test_eval_subset_is_a_fixed_stride_over_the_whole_test_set(small_dataset):
    # 23 test images, at most 8: every 3rd (ceil(23 / 8)), so 8 images from all over the set.
    assert eval_subset_stride(23, 8) == 3 and eval_subset_stride(23, None) == 1
    assert eval_subset_stride(23, 50) == 1
    chunks = list(eval_batches(small_dataset, batch_size=5, limit=8))
    labels = torch.cat([y for _, y in chunks])
    assert torch.equal(labels, small_dataset.test_labels[::3])
    x_all = torch.cat([x for x, _ in chunks])
    want = normalize(small_dataset.test_images[::3], small_dataset.mean, small_dataset.std)
    assert torch.equal(x_all, want)
    again = torch.cat([y for _, y in eval_batches(small_dataset, batch_size=7, limit=8)])
    assert torch.equal(again, labels)  # the same images whatever the batch size
    with pytest.raises(UsageError, match="subset"):
        eval_batches(small_dataset, limit=0)


def test_bad_batch_arguments_raise_usage_errors(small_dataset):
    with pytest.raises(UsageError, match="between 1 and the train set size"):
        TrainBatches(small_dataset, batch_size=101)
    with pytest.raises(UsageError, match="non-negative"):
        TrainBatches(small_dataset, batch_size=10).batch(-1)
    with pytest.raises(UsageError, match="positive"):
        eval_batches(small_dataset, batch_size=0)


def test_dataset_validation_is_a_usage_error_not_an_assert(small_dataset):
    # asserts vanish under python -O: a malformed dataset must still be refused
    from dataclasses import replace

    with pytest.raises(UsageError, match="train images must be uint8"):
        replace(small_dataset, train_images=small_dataset.train_images.float())
    with pytest.raises(UsageError, match="test labels must be int64"):
        replace(small_dataset, test_labels=small_dataset.test_labels[:-1])
    with pytest.raises(UsageError, match="resize them to one size"):
        replace(small_dataset, test_images=small_dataset.test_images[:, :, :4])
