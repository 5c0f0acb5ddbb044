"""Strict JSON for reports: non-finite numbers written as the strings "nan", "inf", "-inf"."""

import json
import math

import pandas as pd


def json_number(value):
    """A float for JSON, or its name as a string when it is NaN or infinite (None stays None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def json_records(frame: pd.DataFrame) -> list[dict]:
    """The rows of `frame` as dicts, with non-finite floats written by `json_number`."""
    rows = json.loads(frame.to_json(orient="records", double_precision=15))
    for row, (_, original) in zip(rows, frame.iterrows(), strict=True):
        for key, value in original.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = json_number(value)
    return rows
