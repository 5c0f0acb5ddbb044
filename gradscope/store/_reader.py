"""open_run and Run: read a run file, finished or still being written, into numpy and pandas."""

import contextlib
import functools
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from gradscope.errors import RunFileError, UsageError
from gradscope.store import _schema as schema
from gradscope.store._access import open_for_reading, require_on_disk
from gradscope.store._blocks import block_means
from gradscope.store._events import events_frame
from gradscope.store._header import check_not_truncated
from gradscope.store._prepare import LIVE_HEARTBEAT_SECONDS
from gradscope.store._rows import event_count, read_column, read_rows, read_status, sealed_count

READ_PIECE_BYTES = 16 * 1024 * 1024  # rows read at once when reducing a stat to max_records


def open_run(path) -> "Run":
    """Open a gradscope run file for reading (also while another process writes it)."""
    return Run(path)


class Run:
    """A run file opened for reading: layers, steps, statistics and metrics.

    The view is a snapshot of the committed records at opening; `refresh()` picks up newer ones.
    """

    def __init__(self, path):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"open_run needs the path of a run file (a str or os.PathLike), "
                f"got {type(path).__name__}"
            )
        self.path = str(path)
        file_path = Path(path)
        if file_path.is_dir():
            raise RunFileError(f"{self.path}: is a folder, not a run file; {_runs_in(file_path)}")
        if not file_path.is_file():
            raise RunFileError(f"{self.path}: no such file")
        if not h5py.is_hdf5(file_path):
            raise RunFileError(f"{self.path}: not an HDF5 file, so not a gradscope run file")
        check_not_truncated(file_path)
        try:
            self._file = open_for_reading(file_path)
        except (OSError, RuntimeError) as e:
            raise RunFileError(f"{self.path}: cannot open (truncated or corrupt?): {e}") from e
        try:
            with self._reading("the file header"):
                if self._file.attrs.get("format") != schema.FORMAT_NAME:
                    raise RunFileError(
                        f"{self.path}: an HDF5 file but not a gradscope run file "
                        f"(no format={schema.FORMAT_NAME!r} attribute)"
                    )
                version = int(self._file.attrs.get("format_version", 0))
                if version > schema.FORMAT_VERSION:
                    raise RunFileError(
                        f"{self.path}: run-file format {version} is newer than this gradscope "
                        f"reads ({schema.FORMAT_VERSION}); upgrade gradscope"
                    )
                self.attrs = schema.read_attrs(self._file)
                require_on_disk(self._file[schema.LAYERS], 0, 1)
                self._layer_dicts = schema.read_layers(self._file)
                self.stats = schema.read_stat_names(self._file)
            self.refresh()
        except BaseException:
            self._file.close()
            raise

    # lifecycle

    def refresh(self) -> "Run":
        """Pick up records and metrics committed since opening or the last refresh."""
        f = self._open_file()
        with self._reading("the records"):
            status = self._read_status()
            n_records = int(status["records"])
            self._steps = read_column(f, schema.STEPS, n_records)
            self._steps.flags.writeable = False
            self._n_metrics = int(status["metrics"])
            self._metrics = None
            self._n_events = event_count(status)
        return self

    def close(self) -> None:
        """Close the file handle. Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"Run({self.path!r}, layers={len(self._layer_dicts)}, records={len(self._steps)})"

    @property
    def closed(self) -> bool:
        """True when the writer finished and closed the file (read fresh from the file)."""
        with self._reading("the status"):
            return bool(self._read_status()["closed"])

    @property
    def is_live(self) -> bool:
        """True while a writer has the file open and its heartbeat is under 30 s old."""
        with self._reading("the status"):
            status = self._read_status()
        age = time.time() - float(status["heartbeat"])
        return not status["closed"] and age < LIVE_HEARTBEAT_SECONDS

    def check_readable(self) -> None:
        """Raise RunFileError unless every committed record and metric row is in the file.

        Checks where each chunk of data lies against the file's size on disk, reading no data:
        a copy cut short may open and list its records, yet hold only the first of them.
        """
        f = self._open_file()
        with self._reading("the records"):
            status = self._read_status()
            n_records, n_metrics = int(status["records"]), int(status["metrics"])
            sealed = min(sealed_count(status), n_records)
            for name in (schema.STEPS, schema.TIME):
                require_on_disk(f[name], 0, n_records)
            for name in self.stats:
                require_on_disk(f[schema.STATS_GROUP][name], 0, sealed)
                require_on_disk(f[schema.TAIL_GROUP][name], 0, n_records - sealed)
            for name in (schema.METRIC_STEP, schema.METRIC_NAME, schema.METRIC_VALUE):
                require_on_disk(f[name], 0, n_metrics)

    @property
    def write_error(self) -> str | None:
        """Why writing stopped, if it failed ("No space left on device [errno 28]"): the file
        holds the records written before. None for a run written without error."""
        with self._reading("the status"):
            return schema.status_value(self._read_status(), "error", "") or None

    @property
    def dropped_records(self) -> int:
        """Records the writer dropped because the disk fell behind (read fresh)."""
        with self._reading("the status"):
            return schema.dropped_counts(self._read_status())[0]

    @property
    def dropped_metrics(self) -> int:
        """Metric values the writer dropped because the disk fell behind (read fresh)."""
        with self._reading("the status"):
            return schema.dropped_counts(self._read_status())[1]

    # contents

    @property
    def layers(self) -> pd.DataFrame:
        """One row per layer in depth order: name, type, params, depth."""
        frame = pd.DataFrame(self._layer_dicts, columns=["name", "type", "params"])
        frame["params"] = frame["params"].astype(np.int64)
        frame["depth"] = np.arange(len(frame), dtype=np.int64)
        return frame

    @property
    def steps(self) -> np.ndarray:
        """The optimizer step of each record (int64, increasing)."""
        return self._steps

    def stat(self, name: str) -> np.ndarray:
        """The whole statistic `name` as a float32 array [records, layers]."""
        return self.read(name)[1]

    def read(self, stat, start_step=None, stop_step=None, max_records=None):
        """Records with start_step <= step < stop_step, as (steps, values [records, layers]).

        With more than `max_records` records, consecutive blocks are averaged (ignoring NaN) so
        at most `max_records` rows come back; a block's step is its first step.
        """
        self._check_stat(stat)
        steps = self._steps
        first = 0 if start_step is None else int(np.searchsorted(steps, start_step, "left"))
        stop = len(steps) if stop_step is None else int(np.searchsorted(steps, stop_step, "left"))
        stop = max(first, stop)
        count = stop - first
        n_layers = len(self._layer_dicts)
        if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
            raise UsageError(f"max_records must be a positive integer, got {max_records!r}")
        with self._reading(f"stat {stat!r}"):
            if count == 0:
                return steps[first:stop].copy(), np.empty((0, n_layers), np.float32)
            rows = functools.partial(read_rows, self._open_file(), stat)
            if max_records is None or count <= max_records:
                return steps[first:stop].copy(), rows(first, stop)
            block = -(-count // max_records)  # ceil division
            means = _block_means(rows, n_layers, first, stop, block)
            return steps[first:stop:block].copy(), means

    @property
    def metrics(self) -> pd.DataFrame:
        """Logged scalars: one column per metric name, indexed by step, NaN where not logged."""
        if self._metrics is None:
            long = self._metric_rows()
            if long.empty:
                wide = pd.DataFrame(index=pd.Index([], dtype=np.int64, name="step"))
            else:
                order = list(dict.fromkeys(long["name"]))  # first-appearance order
                long = long.drop_duplicates(["step", "name"], keep="last")
                wide = long.pivot(index="step", columns="name", values="value")
                wide = wide.reindex(columns=order).sort_index()
                wide.columns.name = None
            self._metrics = wide
        return self._metrics.copy()

    def latest_metrics(self) -> pd.DataFrame:
        """The last logged value of each metric: index metric name, columns step and value."""
        long = self._metric_rows()
        latest = long.sort_values("step", kind="stable").drop_duplicates("name", keep="last")
        order = list(dict.fromkeys(long["name"]))
        return latest.set_index("name").reindex(order)[["step", "value"]]

    @property
    def events(self) -> pd.DataFrame:
        """Events, one row each in the order they happened: a step where a non-finite value
        reached an update (`kind` "nonfinite": its origin's `phase`, `layer`, `op`, `message`,
        what became of the `update`) and updates the AMP GradScaler skipped ("amp_overflow").
        Empty for files of format 1 and 2."""
        names = [d["name"] for d in self._layer_dicts]
        if not self._n_events:
            return events_frame(np.zeros(0, dtype=schema.EVENT_DTYPE), names)
        with self._reading("the events"):
            rows = read_column(self._open_file(), schema.EVENTS, self._n_events)
        return events_frame(rows, names)

    def record_frame(self, step=None) -> pd.DataFrame:
        """All statistics at one record (default: the latest): layers as rows, stats as columns."""
        if len(self._steps) == 0:
            raise UsageError(f"{self.path}: the run has no records yet")
        if step is None:
            step = int(self._steps[-1])
        index = int(np.searchsorted(self._steps, step, "left"))
        if index == len(self._steps) or self._steps[index] != step:
            raise UsageError(
                f"no record at step {step}; records span steps {self._steps[0]}..{self._steps[-1]}"
            )
        columns = {}
        with self._reading(f"the record at step {step}"):
            for name in self.stats:
                columns[name] = read_rows(self._open_file(), name, index, index + 1)[0]
        frame = pd.DataFrame(columns, index=pd.Index([d["name"] for d in self._layer_dicts]))
        frame.index.name = "layer"
        return frame

    def to_frame(self) -> pd.DataFrame:
        """Tidy long table with columns step, layer, depth, stat, value."""
        n_records, n_layers = len(self._steps), len(self._layer_dicts)
        names = np.array([d["name"] for d in self._layer_dicts], dtype=object)
        depth = np.arange(n_layers, dtype=np.int64)
        parts = [
            pd.DataFrame(
                {
                    "step": np.repeat(self._steps, n_layers),
                    "layer": np.tile(names, n_records),
                    "depth": np.tile(depth, n_records),
                    "stat": name,
                    "value": self.stat(name).ravel(),
                }
            )
            for name in self.stats
        ]
        return pd.concat(parts, ignore_index=True)

    # internals

    def _open_file(self) -> h5py.File:
        if self._file is None:
            raise UsageError(f"{self.path}: this run was closed; open it again with open_run")
        return self._file

    def _read_status(self) -> np.void:
        return read_status(self._open_file())

    def _check_stat(self, name) -> None:
        if name not in self.stats:
            raise UsageError(f"unknown stat {name!r}; this run has: {', '.join(self.stats)}")

    def _metric_rows(self) -> pd.DataFrame:
        f = self._open_file()
        n = self._n_metrics
        with self._reading("the metrics"):
            columns = [
                read_column(f, name, n)
                for name in (schema.METRIC_STEP, schema.METRIC_NAME, schema.METRIC_VALUE)
            ]
        names = [raw.decode("utf-8") for raw in columns[1]]
        return pd.DataFrame({"step": columns[0], "name": names, "value": columns[2]})

    @contextlib.contextmanager
    def _reading(self, what: str):
        """Turn low-level HDF5 failures into a RunFileError naming the file."""
        try:
            yield
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise RunFileError(
                f"{self.path}: cannot read {what} (truncated or corrupt?): {e}"
            ) from e


def _runs_in(folder: Path, shown: int = 3) -> str:
    """What to name instead of `folder`: the run files in it, or where else to look."""
    runs = sorted(p.name for p in folder.glob("*.h5"))
    if not runs:
        return "name a .h5 run file (none is directly in this folder)"
    names = ", ".join(runs[:shown])
    if len(runs) > shown:
        names += f" and {len(runs) - shown} more"
    return f"name one of the run files in it: {names}"


def _block_means(rows, n_layers: int, first: int, stop: int, block: int) -> np.ndarray:
    """NaN-aware means of consecutive `block`-row blocks of rows(first, stop), read in pieces
    of whole blocks, so memory stays bounded."""
    n_blocks = -(-(stop - first) // block)
    out = np.empty((n_blocks, n_layers), np.float32)
    blocks_per_piece = max(1, READ_PIECE_BYTES // (block * n_layers * 4))
    for b0 in range(0, n_blocks, blocks_per_piece):
        b1 = min(n_blocks, b0 + blocks_per_piece)
        out[b0:b1] = block_means(rows(first + b0 * block, min(stop, first + b1 * block)), block)
    return out
