"""Run files for the tests, written with the store's RunWriter: one home for the helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gradscope.store import RunWriter
from gradscope.store import _writer as writer_module

LAYERS = [
    {"name": "conv1", "type": "Conv2d", "params": 432},
    {"name": "layer1.0.conv1", "type": "Conv2d", "params": 2304},
    {"name": "layer1.0.bn1", "type": "BatchNorm2d", "params": 32},
    {"name": "layer2.0.conv1", "type": "Conv2d", "params": 4608},
    {"name": "fc", "type": "Linear", "params": 330},
]
STATS = ["grad_norm", "weight_norm", "update_ratio"]


def open_writer(path, layers, stats, flush_interval=0.05, **kwargs) -> RunWriter:
    """A RunWriter flushing often (readers in the tests see records soon)."""
    return RunWriter(
        path, layers=layers, stats=list(stats), flush_interval=flush_interval, **kwargs
    )


def lognormal_records(n: int, n_stats: int, n_layers: int, seed: int = 0) -> np.ndarray:
    """`n` records of positive values, float32 [n, stats, layers], the same for a seed."""
    rng = np.random.default_rng(seed)
    return rng.lognormal(size=(n, n_stats, n_layers)).astype(np.float32)


def write_run(
    path: Path,
    n_records: int = 20,
    stats=STATS,
    layers=LAYERS,
    scale: float = 1.0,
    model: str = "ResNet20",
    mtime: float | None = None,
    close: bool = True,
) -> RunWriter:
    """Write a run of `n_records` steps (0, 10, 20, ...) whose gradients shrink with depth.

    `scale` multiplies every value, so two runs differ; `mtime` backdates the file (newest
    runs are preselected). With `close=False` the writer is returned still open (a live run).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = open_writer(path, layers, stats, attrs={"model_class": model})
    depth_decay = np.geomspace(1.0, 1e-3, len(layers), dtype=np.float32)
    for i in range(n_records):
        row = scale * depth_decay * (1.0 + 0.01 * i)
        writer.append(10 * i, np.stack([row * (k + 1) for k in range(len(stats))]))
        writer.log(10 * i, {"loss": 2.0 / (1 + i), "accuracy": i / n_records})
    if not close:
        return writer
    writer.close()
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return writer


def write_runs_folder(root: Path) -> Path:
    """A runs folder with three runs in two folders and one corrupt `.h5` file."""
    write_run(root / "baseline" / "relu.h5", scale=1.0, mtime=1_000_000)
    write_run(root / "baseline" / "tanh.h5", scale=0.5, model="PlainNet20", mtime=2_000_000)
    write_run(root / "sweep" / "lr01.h5", scale=2.0, n_records=30, mtime=3_000_000)
    (root / "broken.h5").write_bytes(b"this is not an HDF5 file")
    (root / "notes.txt").write_text("not a run")
    return root


def twin_layers(blocks: int = 3, shortcut: bool = True) -> list[dict]:
    """Layers named as the bundled CIFAR nets name them: conv1, bn1, then `blocks` stages of
    one block (conv1, bn1, conv2, bn2), stages 2 and 3 with a downsample conv + bn shortcut
    when `shortcut` (a ResNet; without it, its plain twin), then fc."""
    layers = [
        {"name": "conv1", "type": "Conv2d", "params": 432},
        {"name": "bn1", "type": "BatchNorm2d", "params": 32},
    ]
    for stage in range(1, blocks + 1):
        for part in ("conv1", "bn1", "conv2", "bn2"):
            kind = "Conv2d" if part.startswith("conv") else "BatchNorm2d"
            layers.append({"name": f"layer{stage}.0.{part}", "type": kind, "params": 100})
        if shortcut and stage > 1:
            layers.append({"name": f"layer{stage}.0.downsample.0", "type": "Conv2d", "params": 50})
            layers.append(
                {"name": f"layer{stage}.0.downsample.1", "type": "BatchNorm2d", "params": 10}
            )
    layers.append({"name": "fc", "type": "Linear", "params": 650})
    return layers


TWIN_STATS = ["grad_norm", "act_mean", "act_grad_norm"]


def twin_values(layers: list[dict], records: int, plain: bool) -> np.ndarray:
    """[records, stats, layers] for TWIN_STATS: conv gradient norms ~10x BatchNorm's (a flow
    line through both zig-zags); the plain net's signal shrinks 10x per layer towards the
    input and over steps, the ResNet's stays near 1; act_mean is NaN everywhere."""
    n = len(layers)
    is_bn = np.array([layer["type"] == "BatchNorm2d" for layer in layers])
    kind_scale = np.where(is_bn, 0.1, 1.0)
    out = np.empty((records, len(TWIN_STATS), n), dtype=np.float32)
    for i in range(records):
        if plain:
            depth = 10.0 ** (-(n - 1 - np.arange(n)) * (0.2 + 0.1 * i))  # input end shrinks
        else:
            depth = np.ones(n)
        out[i, 0] = kind_scale * depth
        out[i, 1] = np.nan
        out[i, 2] = depth * 0.1
    return out


def write_twin(
    path: Path, model: str, records: int = 10, every: int = 1, close: bool = True
) -> RunWriter:
    """A tiny run as `gradscope record` writes it (attrs model, model_class, experiment;
    metrics loss, error, test_loss, test_error): "resnet*" models have the shortcut layers,
    "plain*" ones do not. With `close=False` the writer is returned still open (a live run)."""
    plain = model.startswith("plain")
    layers = twin_layers(shortcut=not plain)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {"model": model, "model_class": "CifarResNet", "experiment": path.parent.name}
    writer = open_writer(path, layers, TWIN_STATS, attrs=attrs)
    values = twin_values(layers, records, plain)
    for i in range(records):
        step = i * every
        writer.append(step, values[i])
        writer.log(step, {"loss": 2.3 - 0.1 * i, "error": 0.9 - 0.02 * i, "lr": 0.1})
        if i % 5 == 4:
            writer.log(step, {"test_loss": 2.0 - 0.1 * i, "test_error": 0.8 - 0.03 * i})
    if close:
        writer.close()
    return writer


def fail_writes_after(monkeypatch, budget: int, code: int) -> None:
    """Make the writer's data writes raise OSError(`code`) once `budget` bytes went through
    (the status row stays writable, as on a full disk where it is rewritten in place)."""
    written = [0]
    write_rows = writer_module._write_rows

    def failing(ds, start, values):
        if ds.name != "/status":
            written[0] += np.asarray(values).nbytes
            if written[0] > budget:
                raise OSError(code, os.strerror(code))
        write_rows(ds, start, values)

    monkeypatch.setattr(writer_module, "_write_rows", failing)
