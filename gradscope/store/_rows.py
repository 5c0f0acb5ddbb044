"""Read rows of a statistic from its two parts: the sealed, compressed body and the open tail."""

import h5py
import numpy as np

from gradscope.errors import RunFileError
from gradscope.store import _schema as schema
from gradscope.store._access import require_on_disk

MAX_READ_ATTEMPTS = 20  # a live writer seals a chunk once per chunk of records: retries are rare


def sealed_count(status: np.void) -> int:
    """Records stored in the compressed `stats/*` datasets (all of them in a format-1 file)."""
    names = status.dtype.names
    return int(status["sealed"] if "sealed" in names else status["records"])


def event_count(status: np.void) -> int:
    """Committed event rows (none in a file of format 1 or 2, which had no events)."""
    return int(status["events"]) if "events" in status.dtype.names else 0


def read_events_rows(f: h5py.File, status: np.void) -> np.ndarray:
    """The committed rows of the `events` dataset (EVENT_DTYPE), read fresh."""
    count = event_count(status)
    if not count:
        return np.zeros(0, dtype=schema.EVENT_DTYPE)
    return read_column(f, schema.EVENTS, count)


def read_status(f: h5py.File) -> np.void:
    """The status row, read fresh from the file (a writer may have updated it)."""
    status = f[schema.STATUS]
    status.refresh()
    require_on_disk(status, 0, 1)
    return status[0]


def read_column(f: h5py.File, name: str, count: int) -> np.ndarray:
    """The first `count` rows of the 1-D dataset `name` (steps, metrics), read fresh."""
    ds = f[name]
    ds.refresh()
    require_on_disk(ds, 0, count)
    return ds[:count]


def read_rows(f: h5py.File, name: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of statistic `name` as float32 [rows, layers]; all must be committed.

    Rows below the status' `sealed` count come from `stats/<name>`, the others from
    `stats_tail/<name>`, where row `sealed + i` is at row `i`. A live writer reuses the tail only
    after committing a larger `sealed`, so a tail read is kept only if `sealed` did not change
    while it ran.
    """
    body = f[schema.STATS_GROUP][name]
    out = np.empty((max(0, stop - start), body.shape[1]), np.float32)
    if stop <= start:
        return out
    for _ in range(MAX_READ_ATTEMPTS):
        sealed = sealed_count(read_status(f))
        split = min(stop, max(start, sealed))
        if split > start:
            body.refresh()
            require_on_disk(body, start, split)
            out[: split - start] = body[start:split]
        if split == stop:
            return out
        tail = f[schema.TAIL_GROUP][name]
        if stop - sealed > tail.shape[0]:
            raise RunFileError(
                f"{f.filename}: records {start}..{stop - 1} are not in the file any more "
                "(was it resumed from an earlier step?); open it again"
            )
        tail.refresh()
        require_on_disk(tail, split - sealed, stop - sealed)
        out[split - start :] = tail[split - sealed : stop - sealed]
        if sealed_count(read_status(f)) == sealed:
            return out
    raise RunFileError(
        f"{f.filename}: the writer kept moving records while reading stat {name!r}; try again"
    )
