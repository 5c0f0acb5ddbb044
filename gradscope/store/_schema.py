"""The run-file schema: every dataset and attribute name, dtype, chunk shape and filter."""

import json
import math

import h5py
import numpy as np

from gradscope.errors import UsageError

FORMAT_NAME = "gradscope-run"  # value of the `format` file attribute
# bumped on incompatible schema changes (2: compressed stats + stats_tail; 3: events, and a
# status saying how many events there are, how many records and metric values were dropped, and
# which write error ended the file)
FORMAT_VERSION = 3

# File attributes written by the store itself; user attrs may not reuse these names.
RESERVED_ATTRS = ("format", "format_version", "gradscope_version", "torch_version", "created")
JSON_ATTRS_KEY = "json_attrs"  # file attribute: names of the attrs stored as JSON text

LAYERS = "layers"
STEPS = "steps"
TIME = "time"
STATS_GROUP = "stats"
TAIL_GROUP = "stats_tail"
METRIC_STEP = "metrics/step"
METRIC_NAME = "metrics/name"
METRIC_VALUE = "metrics/value"
STATUS = "status"
EVENTS = "events"

METRIC_NAME_BYTES = 64  # metric names are fixed-length UTF-8 (SWMR-friendly, no heap)
STATUS_ERROR_BYTES = 256  # the write error that ended a file: fixed-length UTF-8, cut to fit
LAYER_DTYPE = np.dtype(
    [("name", h5py.string_dtype()), ("type", h5py.string_dtype()), ("params", "<i8")]
)
# `records` / `metrics` are the committed row counts: readers never look past them. Records
# below `sealed` are in the compressed `stats/*` datasets, the rest in `stats_tail/*`.
# `dropped_*` count what the writer dropped because the disk fell behind (over the file's
# life); `error` is empty unless writing failed, and then says why the file ended there.
STATUS_DTYPE = np.dtype(
    [
        ("closed", "u1"),
        ("heartbeat", "<f8"),
        ("records", "<i8"),
        ("metrics", "<i8"),
        ("sealed", "<i8"),
        ("events", "<i8"),
        ("dropped_records", "<i8"),
        ("dropped_metrics", "<i8"),
        ("error", f"S{STATUS_ERROR_BYTES}"),
    ]
)
# One row per event of the run (docs/run-file.md): a step where a non-finite value reached an
# update (its origin, found by the replay) or an update the AMP GradScaler skipped. Fixed-size
# text (UTF-8 bytes, cut to fit) keeps rows SWMR-friendly; `layer` is a depth, -1 for none.
EVENT_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("kind", "S16"),
        ("phase", "S24"),
        ("layer", "<i4"),
        ("rank", "<i4"),
        ("micro_batch", "<i4"),
        ("micro_batches", "<i4"),
        ("update", "S8"),
        ("recorded", "u1"),
        ("op", "S64"),
        ("op_dtype", "S16"),
        ("op_shape", "S48"),
        ("op_absmax", "<f8"),
        ("message", "S512"),
    ]
)
EVENT_CHUNK_ROWS = 64  # events are rare: a chunk is about 50 KB

STAT_CHUNK_BYTES = 64 * 1024  # raw bytes per stats chunk
TAIL_CHUNK_BYTES = 4 * 1024  # raw bytes per stats_tail chunk: allocated as the tail fills
MAX_LAYERS_PER_CHUNK = 32768
VECTOR_CHUNK_ROWS = 4096  # steps, time and metrics columns
# Compression: byte shuffle + deflate (in every HDF5 build, unlike lzf), which halves recorded
# statistics. Under SWMR, HDF5 never reuses freed file space, and a compressed chunk rewritten
# with a new size is a new allocation that leaks the old one. So a compressed chunk is written
# exactly once, when all its rows are known ("sealed"); until then its rows live uncompressed in
# `stats_tail/<name>`, whose fixed-size chunks are rewritten in place.
STAT_FILTERS = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def stat_chunk_shape(n_layers: int) -> tuple[int, int]:
    """Chunk shape [records, layers] of a stats dataset: about STAT_CHUNK_BYTES of float32."""
    layers = max(1, min(n_layers, MAX_LAYERS_PER_CHUNK))
    rows = STAT_CHUNK_BYTES // (4 * layers)
    rows = 2 ** int(math.log2(max(rows, 1)))
    return (max(8, min(rows, 4096)), layers)


def tail_chunk_shape(n_layers: int) -> tuple[int, int]:
    """Chunk shape of a stats_tail dataset: whole rows, about TAIL_CHUNK_BYTES of float32."""
    chunk_rows, layers = stat_chunk_shape(n_layers)
    return (max(1, min(chunk_rows, TAIL_CHUNK_BYTES // (4 * layers))), layers)


def status_row(
    closed: bool,
    heartbeat: float,
    records: int,
    metrics: int,
    sealed: int,
    *,
    events: int = 0,
    dropped_records: int = 0,
    dropped_metrics: int = 0,
    error: str = "",
) -> np.ndarray:
    """The `status` dataset's one row, ready to be written."""
    encoded = error.encode("utf-8")[:STATUS_ERROR_BYTES].decode("utf-8", "ignore").encode()
    row = (
        int(closed),
        heartbeat,
        records,
        metrics,
        sealed,
        events,
        dropped_records,
        dropped_metrics,
    )
    return np.array([(*row, encoded)], dtype=STATUS_DTYPE)


def status_value(status: np.void, name: str, default):
    """Field `name` of a status row; `default` in files of a format that lacks it."""
    if name not in status.dtype.names:
        return default
    value = status[name]
    return _text(value) if isinstance(value, bytes) else value.item()


def dropped_counts(status: np.void) -> tuple[int, int]:
    """(records, metric values) the writer dropped over the file's life (0, 0 before format 3)."""
    return (
        status_value(status, "dropped_records", 0),
        status_value(status, "dropped_metrics", 0),
    )


def validate_layers(layers) -> list[dict]:
    """Check the writer's layer list and return it as plain dicts (name, type, params)."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise UsageError("layers must be a non-empty list of {'name', 'type', 'params'} dicts")
    clean = []
    for i, layer in enumerate(layers):
        try:
            clean.append(
                {
                    "name": str(layer["name"]),
                    "type": str(layer["type"]),
                    "params": int(layer["params"]),
                }
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(
                f"layers[{i}] must be a dict with 'name' (str), 'type' (str), 'params' (int): {e!r}"
            ) from e
    names = [layer["name"] for layer in clean]
    if len(set(names)) != len(names):
        raise UsageError("layer names must be unique")
    return clean


def validate_stats(stats) -> list[str]:
    """Check the writer's statistic names: non-empty, unique, usable as HDF5 dataset names."""
    if isinstance(stats, str) or not stats:
        raise UsageError("stats must be a non-empty list of statistic names")
    names = [str(s) for s in stats]
    for name in names:
        if not name or "/" in name or name in (".", ".."):
            raise UsageError(f"invalid statistic name {name!r}: use a non-empty name without '/'")
    if len(set(names)) != len(names):
        raise UsageError("statistic names must be unique")
    return names


def encode_attrs(attrs) -> dict[str, str]:
    """Encode user attrs as JSON text (one string per attr); reject reserved or non-JSON values."""
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise UsageError("attrs must be a dict of JSON-able values")
    encoded = {}
    for key, value in attrs.items():
        if key in RESERVED_ATTRS or key == JSON_ATTRS_KEY:
            raise UsageError(f"attr name {key!r} is reserved by the run file; choose another")
        try:
            encoded[str(key)] = json.dumps(value)
        except (TypeError, ValueError) as e:
            raise UsageError(f"attr {key!r} is not JSON-serialisable: {e}") from e
    return encoded


def layers_array(layers: list[dict]) -> np.ndarray:
    """The `layers` dataset contents for a list of layer dicts."""
    rows = [(layer["name"], layer["type"], layer["params"]) for layer in layers]
    return np.array(rows, dtype=LAYER_DTYPE)


def read_layers(f: h5py.File) -> list[dict]:
    """The layer dicts stored in an open run file, in depth order."""
    data = f[LAYERS][()]
    return [
        {"name": _text(row["name"]), "type": _text(row["type"]), "params": int(row["params"])}
        for row in data
    ]


def read_stat_names(f: h5py.File) -> list[str]:
    """The statistic names of an open run file, in file (creation) order."""
    return list(f[STATS_GROUP].keys())


def read_attrs(f: h5py.File) -> dict:
    """The file attributes as a dict, with JSON-encoded attrs decoded."""
    json_keys = set(f.attrs.get(JSON_ATTRS_KEY, ()))
    out = {}
    for key, value in f.attrs.items():
        if key == JSON_ATTRS_KEY:
            continue
        value = _text(value) if isinstance(value, bytes) else value
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = json.loads(value) if key in json_keys else value
    return out


def write_attrs(f: h5py.File, plain_attrs: dict, json_attrs: dict) -> None:
    """Set file attributes: plain values as they are, JSON-encoded ones listed in `json_attrs`."""
    for key, value in plain_attrs.items():
        f.attrs[key] = value
    known_json = set(f.attrs.get(JSON_ATTRS_KEY, ()))
    for key, value in json_attrs.items():
        f.attrs[key] = value
    f.attrs[JSON_ATTRS_KEY] = sorted(known_json | set(json_attrs))


def create_datasets(f: h5py.File, layers: list[dict], stats: list[str]) -> None:
    """Create every dataset of an empty run file (before SWMR mode, which forbids new datasets)."""
    f.create_dataset(LAYERS, data=layers_array(layers))
    vector = {"shape": (0,), "maxshape": (None,), "chunks": (VECTOR_CHUNK_ROWS,)}
    f.create_dataset(STEPS, dtype="<i8", **vector)
    f.create_dataset(TIME, dtype="<f8", **vector)
    group = f.create_group(STATS_GROUP, track_order=True)
    tail = f.create_group(TAIL_GROUP, track_order=True)
    n_layers = len(layers)
    chunks = stat_chunk_shape(n_layers)
    for name in stats:
        group.create_dataset(
            name,
            shape=(0, n_layers),
            maxshape=(None, n_layers),
            dtype="<f4",
            chunks=chunks,
            fillvalue=np.nan,
            **STAT_FILTERS,
        )
        tail.create_dataset(
            name,
            shape=(chunks[0], n_layers),
            dtype="<f4",
            chunks=tail_chunk_shape(n_layers),
            fillvalue=np.nan,
        )
    f.create_dataset(METRIC_STEP, dtype="<i8", **vector)
    f.create_dataset(METRIC_NAME, dtype=f"S{METRIC_NAME_BYTES}", **vector)
    f.create_dataset(METRIC_VALUE, dtype="<f8", **vector)
    f.create_dataset(
        EVENTS, shape=(0,), maxshape=(None,), chunks=(EVENT_CHUNK_ROWS,), dtype=EVENT_DTYPE
    )
    status = f.create_dataset(STATUS, shape=(1,), dtype=STATUS_DTYPE)
    # Written now so the dataset has storage before SWMR starts (readers fail otherwise).
    status[:] = status_row(False, 0.0, 0, 0, 0)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
