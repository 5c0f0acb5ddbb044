"""Run files for the tests, written with the store's RunWriter: one home for the helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gradscope.store import RunWriter

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
