"""RunWriter: streams records and metrics into an HDF5 run file from a background thread."""

import atexit
import collections
import operator
import os
import queue
import threading
import time
import warnings

import h5py
import numpy as np

from gradscope.errors import RunFileError, RunFileWarning, UsageError, describe
from gradscope.store import _schema as schema
from gradscope.store._events import encode_event
from gradscope.store._failure import (
    FileVanished,
    WriteFailure,
    check_write_error_mode,
    dropping_warning,
)
from gradscope.store._heap import release_free_memory
from gradscope.store._metric_values import metric_value
from gradscope.store._prepare import LIVE_HEARTBEAT_SECONDS, WRITING_HERE, prepare_run_file

MAX_FLUSH_INTERVAL = LIVE_HEARTBEAT_SECONDS / 3  # the heartbeat is written at every flush
# Seconds between returns of the C heap's free memory to the OS. The writer frees buffers of
# many sizes (a flush's records, HDF5's blocks); glibc keeps such memory resident, and a run
# recording every step grew by some 20 bytes a record that way (benchmarks/longrun.py).
RELEASE_INTERVAL = 60.0
MAX_PENDING_BYTES = 32 * 1024 * 1024  # the writer thread flushes early past this much data
MAX_QUEUED_BYTES = 32 * 1024 * 1024  # records waiting for the writer thread, at most (default)
QUEUE_ITEMS = (256, 65536)  # the default queue holds this many items at least, and at most
METRIC_ROW_BYTES = 80  # what one pending metric value holds (step, name, value)
_CLOSE = object()  # queue sentinel: drain, mark the file closed, stop


def default_queue_size(record_bytes: int) -> int:
    """Items the queue holds: about MAX_QUEUED_BYTES of records, within QUEUE_ITEMS."""
    low, high = QUEUE_ITEMS
    return max(low, min(high, MAX_QUEUED_BYTES // max(1, record_bytes)))


class RunWriter:
    """Append records ([stats, layers] float32 arrays), scalar metrics and events to a run file.

    All HDF5 work happens in a background thread; `append` and `log` only put work on a
    bounded queue and never wait for the disk: when the queue is full (the disk fell behind)
    the record or metrics are dropped and counted in the file.

    When writing fails (a full disk, an I/O error, a read-only file system, the file or its
    folder removed), the thread stops writing, marks the file as ended by that error if it
    can, and closes it; the file keeps every record committed before. Then, with
    `on_write_error="warn"` (the default) the next call warns once (`RunFileWarning`) and
    later records are dropped at no cost; with `"raise"` every later `append` and `log`
    raises `RunFileError`. Any other error in the thread (a record of the wrong shape) is
    raised as `RunFileError` at the next `append`, `log` or `close`.
    """

    def __init__(
        self,
        path,
        layers,
        stats,
        attrs=None,
        overwrite=False,
        resume=False,
        start_step=None,
        flush_interval=2.0,
        queue_size=None,
        on_write_error="warn",
    ):
        self.layers = schema.validate_layers(layers)
        self.stats = schema.validate_stats(stats)
        if not 0 < float(flush_interval) <= MAX_FLUSH_INTERVAL:
            raise UsageError(f"flush_interval must be in (0, {MAX_FLUSH_INTERVAL:g}] seconds")
        if queue_size is None:
            queue_size = default_queue_size(4 * len(self.stats) * len(self.layers))
        if int(queue_size) < 1:
            raise UsageError("queue_size must be at least 1")
        check_write_error_mode(on_write_error)
        if start_step is not None:
            start_step = _check_step(start_step)
        opened = prepare_run_file(
            path, self.layers, self.stats, attrs, overwrite, resume, start_step
        )
        self.path = str(path)
        self.on_write_error = on_write_error
        self._file = opened.file
        self._real_path = os.path.realpath(path)
        WRITING_HERE.add(self._real_path)
        self._fd = opened.file.id.get_vfd_handle()  # tells whether the file was deleted
        self._datasets = {}  # path -> open dataset, for the writer thread (see _dataset)
        self._n_records = opened.n_records
        self._n_metrics = opened.n_metrics
        self._n_events = opened.n_events
        self._sealed = opened.n_sealed
        # what `status` says is on disk: (records, metric rows, sealed), and the last record's
        # step; the steps of the flush in progress, from record `_flush_first` on
        self._committed = (opened.n_records, opened.n_metrics, opened.n_sealed, opened.n_events)
        self._committed_step = opened.last_record_step
        self._flush_first, self._flush_steps = opened.n_records, []
        self._chunk_rows = schema.stat_chunk_shape(len(self.layers))[0]
        # The records of the chunk being filled, [stats, chunk rows, layers]: sealed from memory.
        shape = (len(self.stats), self._chunk_rows, len(self.layers))
        self._open_rows = np.full(shape, np.nan, dtype=np.float32)
        self._open_rows[:, : opened.n_records - opened.n_sealed] = opened.open_rows
        self._last_record_step = opened.last_record_step
        self._last_metric_step = opened.last_metric_step
        self._shape = (len(self.stats), len(self.layers))
        self._flush_interval = float(flush_interval)
        self._queue = queue.Queue(maxsize=int(queue_size))
        self._pending_records = []  # (step, wall time, [stats, layers] array), writer thread only
        self._pending_metrics = []  # (step, encoded name, value), writer thread only
        self._events = collections.deque()  # queued events (1-row EVENT_DTYPE arrays)
        self._pending_events = []  # taken from there, to write: writer thread only
        self._layer_names = [layer["name"] for layer in self.layers]
        # dropped because the queue was full: counted by the calling thread, stored by the writer
        self.dropped_records = opened.dropped_records
        self.dropped_metrics = opened.dropped_metrics
        self._warned_dropping = False
        self._error = None  # an error in the thread other than a failed write: raised
        self.failure: WriteFailure | None = None  # a failed write: the writer stopped there
        self._failure_reported = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gradscope-run-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def last_step(self):
        """The last step recorded (records or metrics, including queued ones), or None."""
        steps = [s for s in (self._last_record_step, self._last_metric_step) if s is not None]
        return max(steps) if steps else None

    @property
    def stopped(self) -> bool:
        """True once writing failed: nothing more reaches the file."""
        return self.failure is not None

    def check(self) -> None:
        """Report a failed write now, if there was one: a warning the first time (with
        on_write_error="warn"), RunFileError every time (with "raise")."""
        self._check_open()

    def append(self, step, values) -> None:
        """Queue one record: a float32 [stats, layers] array, or a callable returning one."""
        self._check_open()
        step = _check_step(step)
        if self._last_record_step is not None and step <= self._last_record_step:
            raise UsageError(
                f"record steps must increase: got {step} after {self._last_record_step} "
                "(to re-record steps after a restart, resume with start_step=)"
            )
        stopped = self.failure is not None  # nothing to copy, nothing to queue
        if not (stopped or callable(values)):
            values = self._checked_array(values, UsageError)
        self._last_record_step = step
        if stopped:
            return
        if not self._offer(("record", step, time.time(), values)):
            self.dropped_records += 1

    def log(self, step, metrics) -> None:
        """Queue scalar metrics (a dict name -> number) logged at `step`."""
        self._check_open()
        step = _check_step(step)
        if not isinstance(metrics, dict):
            raise UsageError("metrics must be a dict of name -> number")
        rows = []
        for name, value in metrics.items():
            encoded = str(name).encode("utf-8")
            if not encoded or len(encoded) > schema.METRIC_NAME_BYTES:
                raise UsageError(
                    f"metric name {name!r} must be 1 to {schema.METRIC_NAME_BYTES} bytes of UTF-8"
                )
            rows.append((step, encoded, metric_value(name, value)))
        if not rows:
            return
        last = self._last_metric_step
        self._last_metric_step = step if last is None else max(last, step)
        if self.failure is None and not self._offer(("metrics", rows)):
            self.dropped_metrics += len(rows)

    def event(self, event: dict) -> None:
        """Queue one event: a dict of `schema.EVENT_DTYPE`'s fields (`layer` by name), e.g.
        `{"step": 7, "kind": "nonfinite", "phase": "forward", "layer": "fc", ...}`."""
        self._check_open()
        if self.failure is None:  # rare and never dropped: beside the bounded queue
            self._events.append(encode_event(event, self._layer_names))

    def close(self) -> None:
        """Write everything queued, mark the file closed and close it. Idempotent.

        After a failed write it only reports the failure, if no call did yet: a warning with
        on_write_error="warn", RunFileError with "raise".
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        while self._thread.is_alive():  # waits for room in the queue, never for a dead writer
            try:
                self._queue.put(_CLOSE, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise_error()
        if not self._failure_reported:
            self._report_failure()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # calling-thread helpers

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{self.path}: the run writer is closed")
        self._raise_error()
        if self.failure is not None and (
            not self._failure_reported or self.on_write_error == "raise"
        ):
            self._report_failure()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RunFileError(f"{self.path}: writing the run failed: {self._error!r}") from (
                self._error
            )

    def _report_failure(self) -> None:
        """Warn once about a failed write, or raise it (on_write_error="raise")."""
        failure = self.failure
        if failure is None:
            return
        self._failure_reported = True
        if self.on_write_error == "raise":
            raise RunFileError(failure.error_message()) from failure.error
        warnings.warn(failure.warning(), RunFileWarning, stacklevel=4)

    def _offer(self, item) -> bool:
        """Queue `item` without waiting; False (and a warning, the first time) when full."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            if not self._warned_dropping:
                self._warned_dropping = True
                message = dropping_warning(self.path, self._queue.maxsize)
                warnings.warn(message, RunFileWarning, stacklevel=3)
            return False

    def _checked_array(self, values, error_type) -> np.ndarray:
        array = np.array(values, dtype=np.float32)  # a copy: the caller may reuse its buffer
        if array.shape != self._shape:
            raise error_type(
                f"a record must have shape [stats, layers] = {list(self._shape)}, "
                f"got {list(array.shape)}"
            )
        return array

    # writer-thread side

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            self._error = e
        finally:
            self._datasets.clear()
            try:
                self._file.close()
            except Exception as e:  # noqa: BLE001
                if self.failure is None:
                    self._error = self._error or e
            if self.failure is not None:
                _drain(self._queue)  # what was queued before the failure: never written
            WRITING_HERE.discard(self._real_path)

    def _serve(self) -> None:
        next_flush = time.monotonic() + self._flush_interval
        next_release = time.monotonic() + RELEASE_INTERVAL
        pending_bytes = 0
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _CLOSE:
                self._write(closed=True)
                return
            if item is not None and item[0] == "record":
                _, step, wall, values = item
                if callable(values):
                    values = self._checked_array(values(), RunFileError)
                self._pending_records.append((step, wall, values))
                pending_bytes += values.nbytes
            elif item is not None:
                self._pending_metrics.extend(item[1])
                pending_bytes += METRIC_ROW_BYTES * len(item[1])
            if time.monotonic() >= next_flush or pending_bytes >= MAX_PENDING_BYTES:
                if not self._write(closed=False):
                    return
                pending_bytes = 0
                next_flush = time.monotonic() + self._flush_interval
                if next_flush >= next_release:
                    release_free_memory()
                    next_release = next_flush + RELEASE_INTERVAL

    def _write(self, closed: bool) -> bool:
        """Flush; on a failure, stop writing (see `_fail`) and return False."""
        try:
            if os.fstat(self._fd).st_nlink == 0:
                raise FileVanished()
            self._flush(closed)
            return True
        except Exception as e:  # noqa: BLE001 - every failure of the file ends the writing
            self._fail(e)
            return False

    def _fail(self, error: Exception) -> None:
        """Writing failed: mark the file as ended by `error` (its committed records stay
        readable) and record the failure for the calling thread."""
        mark_error = None
        if not isinstance(error, FileVanished):
            try:
                self._commit(closed=True, error=error)
            except Exception as e:  # noqa: BLE001 - the disk may refuse this write too
                mark_error = e
        self.failure = WriteFailure(
            self.path,
            error,
            self._committed[0],
            self._committed_step,
            marked=mark_error is None and not isinstance(error, FileVanished),
            mark_error=mark_error,
        )

    def _flush(self, closed: bool) -> None:
        """Write pending rows and flush them, then commit the new counts in `status`.

        Counts are committed only after the data they cover is on disk, so readers and a crash
        both see a consistent prefix. Record values go to the uncompressed tail; each chunk of
        records that fills up is written once to the compressed `stats/*` datasets and committed
        as sealed before the tail is reused. At close, the last partial chunk is sealed too.
        """
        while self._events:
            self._pending_events.append(self._events.popleft())
        block = None
        if self._pending_records:
            records = self._pending_records
            block = np.stack([values for _, _, values in records])  # [records, stats, layers]
            n0, n1 = self._n_records, self._n_records + len(records)
            self._flush_first, self._flush_steps = n0, [r[0] for r in records]
            self._write_column(schema.STEPS, n0, n1, self._flush_steps, np.int64)
            self._write_column(schema.TIME, n0, n1, [r[1] for r in records], np.float64)
            self._pending_records = []
        n_metrics = self._n_metrics
        if self._pending_metrics:
            rows = self._pending_metrics
            n_metrics += len(rows)
            dtypes = (np.int64, f"S{schema.METRIC_NAME_BYTES}", np.float64)
            names = (schema.METRIC_STEP, schema.METRIC_NAME, schema.METRIC_VALUE)
            for j, (name, dtype) in enumerate(zip(names, dtypes, strict=True)):
                self._write_column(name, self._n_metrics, n_metrics, [r[j] for r in rows], dtype)
            self._pending_metrics = []
        if self._pending_events:
            rows = np.concatenate(self._pending_events)
            n_events = self._n_events + len(rows)
            self._write_column(schema.EVENTS, self._n_events, n_events, rows, schema.EVENT_DTYPE)
            self._n_events = n_events
            self._pending_events = []
        if block is not None:
            self._append_stat_rows(block)  # commits at each sealed chunk keep the old metrics
        self._n_metrics = n_metrics
        if closed and self._sealed < self._n_records:
            self._seal(closed=True)
        else:
            self._commit(closed)

    def _dataset(self, path: str):
        """The open dataset at `path`, looked up once: a lookup by path costs more than the
        write of a flush's few rows."""
        ds = self._datasets.get(path)
        if ds is None:
            ds = self._datasets[path] = self._file[path]
        return ds

    def _write_column(self, name, start, stop, values, dtype) -> None:
        ds = self._dataset(name)
        ds.resize(stop, axis=0)
        _write_rows(ds, start, np.array(values, dtype=dtype))
        ds.flush()

    def _append_stat_rows(self, block: np.ndarray) -> None:
        """Put [records, stats, layers] rows after the committed ones: tail or sealed chunks."""
        tails = [self._dataset(f"{schema.TAIL_GROUP}/{name}") for name in self.stats]
        touched = False
        done = 0
        while done < len(block):
            start = self._n_records - self._sealed  # tail row of the next record
            take = min(len(block) - done, self._chunk_rows - start)
            rows = block[done : done + take].transpose(1, 0, 2)  # [stats, take, layers]
            self._open_rows[:, start : start + take] = rows
            self._n_records += take
            done += take
            if start + take == self._chunk_rows:
                self._seal(closed=False)  # the chunk is full: its rows never touch the tail
            else:
                for tail, stat_rows in zip(tails, rows, strict=True):
                    _write_rows(tail, start, stat_rows)
                touched = True
        if touched:
            for tail in tails:
                tail.flush()

    def _seal(self, closed: bool) -> None:
        """Write the open chunk's records to the compressed datasets, flush, commit them sealed."""
        lo, hi = self._sealed, self._n_records
        bodies = [self._dataset(f"{schema.STATS_GROUP}/{name}") for name in self.stats]
        for body, rows in zip(bodies, self._open_rows, strict=True):
            body.resize(hi, axis=0)
            _write_rows(body, lo, rows[: hi - lo])
        for body in bodies:
            body.flush()
        self._sealed = hi
        self._commit(closed)

    def _commit(self, closed: bool, error: BaseException | None = None) -> None:
        """Write the counts of what is on disk to `status`; ending on a failed write, the
        counts of the last commit (what is surely on disk) and why the file ends there."""
        status = self._dataset(schema.STATUS)
        counts = (self._n_records, self._n_metrics, self._sealed, self._n_events)
        if error is not None:
            counts = None
        records, metrics, sealed, events = counts or self._committed
        row = schema.status_row(
            closed,
            time.time(),
            records,
            metrics,
            sealed,
            events=events,
            dropped_records=self.dropped_records,
            dropped_metrics=self.dropped_metrics,
            error="" if error is None else describe(error),
        )
        _write_rows(status, 0, row)
        status.flush()
        if counts is not None:
            if counts[0] > self._committed[0]:  # the last record committed is in this flush
                self._committed_step = self._flush_steps[counts[0] - self._flush_first - 1]
            self._committed = counts


def _drain(items: queue.Queue) -> None:
    """Drop what is waiting in `items`."""
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return


def _write_rows(ds, start: int, values: np.ndarray) -> None:
    """Write `values` ([rows, ...], of the dataset's dtype) at row `start` of `ds` through
    h5py's low-level API: its slicing parses a selection and checks dtypes on every call,
    several times the cost of writing the few rows a flush adds."""
    values = np.ascontiguousarray(values)
    if not values.shape[0]:
        return
    space = ds.id.get_space()
    space.select_hyperslab((start,) + (0,) * (values.ndim - 1), values.shape)
    ds.id.write(h5py.h5s.create_simple(values.shape), space, values)


def _check_step(step) -> int:
    try:
        step = operator.index(step)
    except TypeError as e:
        raise UsageError(f"step must be an integer, got {step!r}") from e
    if step < 0:
        raise UsageError(f"step must be >= 0, got {step}")
    return step
