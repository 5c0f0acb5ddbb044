"""Open a run file for writing: create it, or resume it (truncated, or rebuilt after a crash)."""

import importlib.metadata
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from gradscope.errors import RunFileError, UsageError
from gradscope.store import _schema as schema
from gradscope.store._access import open_for_reading
from gradscope.store._rows import read_events_rows, read_rows

LIVE_HEARTBEAT_SECONDS = 30.0  # a writer whose heartbeat is older than this is presumed gone
COPY_BLOCK_BYTES = 16 * 1024 * 1024  # rows copied at once when rebuilding a crashed file
# HDF5's raw-data chunk cache, per dataset, in the writing process: none. The writer puts whole
# compressed chunks and rows of the uncompressed ones straight to the file, so a cache saves
# nothing; with one (1 MiB a dataset by default) the process grew by about 1.6 kB per record
# over tens of thousands of records, and a failed write (a full disk) left dirty chunks that
# HDF5 kept retrying, and failing, as the file closed (and the process crashed at exit).
WRITER_CHUNK_CACHE_BYTES = 0
# HDF5's metadata cache in the writing process: fixed at this size. By default it starts at
# 2 MiB and may grow to 32 MiB, and it kept every block of the chunk indexes it ever touched,
# so the process grew by about 20 bytes a record; the writer's working set (the headers and
# the newest index blocks of some thirty datasets) is about 50 kB.
WRITER_METADATA_CACHE_BYTES = 128 * 1024

# The run files that writers of this process hold open (real paths): the process's own pid
# says nothing about whether a file it wrote is still being written.
WRITING_HERE: set[str] = set()


@dataclass
class WritableRun:
    """An h5py file in SWMR-write mode plus what the writer must know to continue it."""

    file: h5py.File
    n_records: int  # committed records in the file
    n_metrics: int  # committed metric rows in the file
    n_sealed: int  # records in the compressed stats datasets (a multiple of the chunk rows)
    n_events: int  # committed event rows
    open_rows: np.ndarray  # [stats, n_records - n_sealed, layers]: the records in stats_tail
    last_record_step: int | None
    last_metric_step: int | None
    dropped_records: int = 0  # dropped over the file's life (the disk fell behind)
    dropped_metrics: int = 0


def check_run_path(path, overwrite: bool, resume: bool) -> Path:
    """Check that a run file can be written at `path` now; returns it as a Path.

    Creates the parent folder if missing. Raises UsageError for conflicting options and
    RunFileError for an existing file (without overwrite or resume), a file that a live
    recorder is writing (whatever overwrite says), a folder in the way, or a place that
    cannot be written.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a run file path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if overwrite and resume:
        raise UsageError("pass overwrite=True or resume=True, not both")
    if path.is_dir():
        raise RunFileError(f"{path}: is a folder; give the path of a .h5 file to write")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise RunFileError(
            f"{path}: {blocking} is a file, not a folder, so nothing can be written inside it; "
            "choose another path"
        )
    if path.exists():
        if not (overwrite or resume):
            raise RunFileError(
                f"{path}: file exists; pass overwrite=True to replace it or resume=True to append"
            )
        _check_not_being_written(path, resume)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise RunFileError(f"{path}: cannot write there ({e.strerror or e})") from e
    return path


def prepare_run_file(path, layers, stats, attrs, overwrite, resume, start_step) -> WritableRun:
    """Create or resume the run file at `path` and switch it to SWMR-write mode."""
    if start_step is not None and not resume:
        raise UsageError("start_step only applies with resume=True")
    json_attrs = schema.encode_attrs(attrs)
    path = check_run_path(path, overwrite, resume)
    if resume and path.exists():
        return _resume(path, layers, stats, json_attrs, start_step)
    return _create(path, layers, stats, json_attrs)


def _writer_attrs() -> dict:
    return {"writer_host": socket.gethostname(), "writer_pid": os.getpid()}


def _create(path: Path, layers, stats, json_attrs) -> WritableRun:
    # Built under a temporary name and renamed into place, so a reader never sees a half-made file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    try:
        f = _open_for_writing(tmp, "w")
        plain = {
            "format": schema.FORMAT_NAME,
            "format_version": schema.FORMAT_VERSION,
            "gradscope_version": _gradscope_version(),
            "torch_version": _package_version("torch"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **_writer_attrs(),
        }
        schema.write_attrs(f, plain, json_attrs)
        schema.create_datasets(f, layers, stats)
        f[schema.STATUS][:] = schema.status_row(False, time.time(), 0, 0, 0)
        f.swmr_mode = True
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunFileError(f"{path}: cannot create run file: {e}") from e
    no_rows = np.empty((len(stats), 0, len(layers)), np.float32)
    return WritableRun(f, 0, 0, 0, 0, no_rows, None, None)


def _open_for_writing(path: Path, mode: str) -> h5py.File:
    """An h5py file for the writer: the latest format (SWMR needs it), no chunk cache, a
    small metadata cache of fixed size."""
    f = h5py.File(path, mode, libver="latest", rdcc_nbytes=WRITER_CHUNK_CACHE_BYTES)
    config = f.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.max_size = WRITER_METADATA_CACHE_BYTES
    config.min_size = min(config.min_size, WRITER_METADATA_CACHE_BYTES)
    config.incr_mode = config.flash_incr_mode = 0  # H5C_incr__off, H5C_flash_incr__off
    f.id.set_mdc_config(config)
    return f


def _gradscope_version() -> str:
    # Not the installed distribution's metadata: ours is torch-gradscope, and "gradscope" on
    # PyPI is another project.
    from gradscope import __version__

    return __version__


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _resume(path: Path, layers, stats, json_attrs, start_step) -> WritableRun:
    f = _open_current_format(path)
    if f is None:
        # The writer died (the file still carries its "open for write" flags), or an older
        # gradscope wrote it. Copy the committed prefix into a fresh file of the current format.
        _rebuild_committed_prefix(path)
        try:
            f = _open_for_writing(path, "r+")
        except OSError as e:
            raise RunFileError(f"{path}: cannot open the run file for resuming: {e}") from e
    try:
        _check_same_layout(path, f, layers, stats)
        status = f[schema.STATUS][0]
        dropped_records, dropped_metrics = schema.dropped_counts(status)
        n_records, n_metrics, n_events = _truncate(f, start_step)
        n_sealed, open_rows = _reopen_last_chunk(f, stats, n_records)
        schema.write_attrs(f, _writer_attrs(), json_attrs)
        # a write error that ended the last session is not the end of the file any more
        f[schema.STATUS][:] = schema.status_row(
            False,
            time.time(),
            n_records,
            n_metrics,
            n_sealed,
            events=n_events,
            dropped_records=dropped_records,
            dropped_metrics=dropped_metrics,
        )
        f.flush()
        f.swmr_mode = True
    except BaseException:
        f.close()
        raise
    steps = f[schema.STEPS]
    metric_steps = f[schema.METRIC_STEP]
    return WritableRun(
        f,
        n_records,
        n_metrics,
        n_sealed,
        n_events,
        open_rows,
        int(steps[n_records - 1]) if n_records else None,
        int(metric_steps[:n_metrics].max()) if n_metrics else None,
        dropped_records,
        dropped_metrics,
    )


def _open_current_format(path: Path) -> h5py.File | None:
    """The file opened for appending, or None if HDF5 refuses or its format is not the current."""
    try:
        f = _open_for_writing(path, "r+")
    except OSError:
        return None
    if f.attrs.get("format_version") != schema.FORMAT_VERSION:
        f.close()
        return None
    return f


def _check_not_being_written(path: Path, resume: bool) -> None:
    """Refuse to resume or replace a run file that a live recorder is writing.

    A file that cannot be read as a run file has no recorder writing it: resuming it is an
    error, replacing it (overwrite) is allowed.
    """
    action = "resume it" if resume else "replace it"
    try:
        with open_for_reading(path) as f:
            if f.attrs.get("format") != schema.FORMAT_NAME:
                if resume:
                    raise RunFileError(f"{path}: not a gradscope run file; cannot resume it")
                return
            status = f[schema.STATUS][0]
            host = f.attrs.get("writer_host")
            pid = int(f.attrs.get("writer_pid", -1))
    except (OSError, KeyError, RuntimeError) as e:
        if not resume:
            return
        raise RunFileError(f"{path}: cannot read the run file to {action}: {e}") from e
    if status["closed"]:
        return
    here = host == socket.gethostname() and pid == os.getpid()
    if here:
        alive = os.path.realpath(path) in WRITING_HERE
    elif host == socket.gethostname():
        alive = _process_exists(pid)
    else:
        alive = time.time() - float(status["heartbeat"]) < LIVE_HEARTBEAT_SECONDS
    if not alive:
        return
    if here:
        raise RunFileError(
            f"{path}: this process (pid {pid}) is still writing this run; close its recorder "
            f"(rec.close()) or RunWriter before you {action}, or write to another path"
        )
    raise RunFileError(
        f"{path}: a live recorder (pid {pid} on {host}) is writing this run; refusing to "
        f"{action}: stop that process first, or write to another path"
    )


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_same_layout(path: Path, f: h5py.File, layers, stats) -> None:
    file_layers = schema.read_layers(f)
    file_stats = schema.read_stat_names(f)
    if file_stats != list(stats):
        raise RunFileError(
            f"{path}: cannot resume: file has stats {file_stats}, writer has {stats}"
        )
    if len(file_layers) != len(layers):
        raise RunFileError(
            f"{path}: cannot resume: file has {len(file_layers)} layers, writer has {len(layers)}"
        )
    for depth, (old, new) in enumerate(zip(file_layers, layers, strict=True)):
        if old != new:
            raise RunFileError(
                f"{path}: cannot resume: layer {depth} is {old} in the file, {new} now"
            )


def _truncate(f: h5py.File, start_step) -> tuple[int, int, int]:
    """Cut records, metrics and events to the committed prefix, dropping steps >= start_step."""
    status = f[schema.STATUS][0]
    n_records, n_metrics = int(status["records"]), int(status["metrics"])
    n_events = int(status["events"])
    steps = f[schema.STEPS][:n_records]
    if start_step is not None:
        n_records = int(np.searchsorted(steps, start_step, side="left"))
    for name in (schema.STEPS, schema.TIME):
        f[name].resize(n_records, axis=0)
    columns = [schema.METRIC_STEP, schema.METRIC_NAME, schema.METRIC_VALUE]
    rows = [f[name][:n_metrics] for name in columns]
    keep = np.ones(n_metrics, bool) if start_step is None else rows[0] < start_step
    n_kept = int(keep.sum())
    for name, values in zip(columns, rows, strict=True):
        f[name].resize(n_kept, axis=0)
        if n_kept:
            f[name][:] = values[keep]
    events = f[schema.EVENTS][:n_events]
    if start_step is not None:
        events = events[events["step"] < start_step]
    f[schema.EVENTS].resize(len(events), axis=0)
    if len(events):
        f[schema.EVENTS][:] = events
    return n_records, n_kept, len(events)


def _reopen_last_chunk(f: h5py.File, stats, n_records: int) -> tuple[int, np.ndarray]:
    """Move the records after the last full chunk back to stats_tail, for the writer to extend.

    Returns the new sealed count and those records, [stats, records, layers]. The compressed
    datasets are cut to the sealed records: the partial chunk is written again once full.
    """
    chunk_rows = f[schema.STATS_GROUP][stats[0]].chunks[0]
    n_sealed = n_records // chunk_rows * chunk_rows
    open_rows = np.stack([read_rows(f, name, n_sealed, n_records) for name in stats])
    for name, rows in zip(stats, open_rows, strict=True):
        f[schema.TAIL_GROUP][name][: len(rows)] = rows
        f[schema.STATS_GROUP][name].resize(n_sealed, axis=0)
    return n_sealed, open_rows


def _rebuild_committed_prefix(path: Path) -> None:
    """Replace a crashed run file by a clean copy of its committed records and metrics."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.rebuilding")
    try:
        with (
            open_for_reading(path) as src,
            _open_for_writing(tmp, "w") as dst,
        ):
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            dst.attrs["format_version"] = schema.FORMAT_VERSION
            layers = schema.read_layers(src)
            stats = schema.read_stat_names(src)
            schema.create_datasets(dst, layers, stats)
            status = src[schema.STATUS][0]
            n, m = int(status["records"]), int(status["metrics"])
            for name in (schema.STEPS, schema.TIME):
                dst[name].resize(n, axis=0)
                dst[name][:] = src[name][:n]
            # Whole chunks at a time, so each compressed chunk is written once.
            chunk_rows = dst[schema.STATS_GROUP][stats[0]].chunks[0]
            rows_per_block = max(1, COPY_BLOCK_BYTES // (4 * len(layers) * chunk_rows))
            rows_per_block *= chunk_rows
            for name in stats:
                body = dst[schema.STATS_GROUP][name]
                body.resize(n, axis=0)
                for i in range(0, n, rows_per_block):
                    stop = min(n, i + rows_per_block)
                    body[i:stop] = read_rows(src, name, i, stop)
            for name in (schema.METRIC_STEP, schema.METRIC_NAME, schema.METRIC_VALUE):
                dst[name].resize(m, axis=0)
                if m:
                    dst[name][:] = src[name][:m]
            events = read_events_rows(src, status)  # none in a file of format 1 or 2
            dst[schema.EVENTS].resize(len(events), axis=0)
            if len(events):
                dst[schema.EVENTS][:] = events
            dropped_records, dropped_metrics = schema.dropped_counts(status)
            dst[schema.STATUS][:] = schema.status_row(
                True,
                float(status["heartbeat"]),
                n,
                m,
                n,
                events=len(events),
                dropped_records=dropped_records,
                dropped_metrics=dropped_metrics,
                error=schema.status_value(status, "error", ""),
            )
        os.replace(tmp, path)
    except (OSError, KeyError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise RunFileError(f"{path}: cannot recover the crashed run file for resuming: {e}") from e
