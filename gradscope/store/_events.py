"""Run events (non-finite origins, skipped updates): fixed-size rows, encoded and read back."""

from __future__ import annotations

import math
import operator

import numpy as np
import pandas as pd

from gradscope.errors import UsageError
from gradscope.store import _schema as schema

EVENT_KINDS = ("nonfinite", "amp_overflow")
_TEXT_FIELDS = ("kind", "phase", "update", "op", "op_dtype", "op_shape", "message")
_NONE = {"layer": -1, "rank": -1, "micro_batch": 0, "micro_batches": 0}  # stored for None
COLUMNS = list(schema.EVENT_DTYPE.names)


def encode_event(event: dict, layer_names: list[str]) -> np.ndarray:
    """One event (a dict of EVENT_DTYPE's fields, `layer` by name) as a 1-row array.

    Text is cut to its field's size on a UTF-8 character boundary; fields left out are empty.
    Raises UsageError for an unknown field, kind or layer name.
    """
    unknown = sorted(set(event) - set(COLUMNS))
    if unknown:
        raise UsageError(f"unknown event field(s) {unknown}; events have {', '.join(COLUMNS)}")
    if event.get("kind") not in EVENT_KINDS:
        raise UsageError(f"event kind must be one of {EVENT_KINDS}, got {event.get('kind')!r}")
    row = np.zeros(1, dtype=schema.EVENT_DTYPE)
    row["op_absmax"] = math.nan
    for name, none in _NONE.items():
        row[name] = none
    for name, value in event.items():
        if name in _TEXT_FIELDS:
            row[name] = fit_text(value, schema.EVENT_DTYPE[name].itemsize)
        elif name == "layer":
            row[name] = _layer_depth(value, layer_names)
        elif name == "op_absmax":
            row[name] = math.nan if value is None else float(value)
        elif name == "recorded":
            row[name] = bool(value)
        else:
            row[name] = _NONE[name] if value is None and name in _NONE else _integer(name, value)
    if row["step"][0] < 0:
        raise UsageError(f"an event's step must be >= 0, got {row['step'][0]}")
    return row


def fit_text(value, size: int) -> bytes:
    """`value` as UTF-8 bytes of at most `size`, cut on a character boundary ("" for None)."""
    data = b"" if value is None else str(value).encode("utf-8")
    if len(data) <= size:
        return data
    return data[:size].decode("utf-8", errors="ignore").encode("utf-8")


def events_frame(rows: np.ndarray, layer_names: list[str]) -> pd.DataFrame:
    """Event rows as a DataFrame: text decoded, `layer` a name (None for none), `rank` and
    `micro_batch` nullable integers, `recorded` a bool."""
    frame = pd.DataFrame({name: rows[name] for name in COLUMNS})
    for name in _TEXT_FIELDS:
        frame[name] = pd.Series([v.decode("utf-8") or None for v in rows[name]], dtype=object)
    names = [layer_names[i] if i >= 0 else None for i in rows["layer"]]
    frame["layer"] = pd.Series(names, dtype=object)
    for name in ("rank", "micro_batch", "micro_batches"):
        values = pd.Series(rows[name], dtype="Int64")
        frame[name] = values.mask(values == _NONE[name])
    frame["recorded"] = rows["recorded"].astype(bool)
    return frame


def _layer_depth(name, layer_names: list[str]) -> int:
    if name is None:
        return -1
    try:
        return layer_names.index(str(name))
    except ValueError as e:
        raise UsageError(f"event layer {name!r} is not a layer of this run") from e


def _integer(name: str, value) -> int:
    try:
        return operator.index(value)
    except TypeError as e:
        raise UsageError(f"event field {name} must be an integer, got {value!r}") from e
