"""Helpers shared by the figure builders: run lists, labels, colours, value cleaning."""

from pathlib import Path

import numpy as np
import plotly.colors

from gradscope.errors import UsageError

RUN_COLOURS = plotly.colors.qualitative.Plotly  # one colour per run, in the order given


def as_run_list(runs) -> list:
    """The runs as a non-empty list (a single run is accepted too)."""
    if hasattr(runs, "stat") and hasattr(runs, "layers"):
        return [runs]
    runs = list(runs)
    if not runs:
        raise UsageError("no runs given: pass at least one run opened with gradscope.open_run")
    return runs


def run_label(run) -> str:
    """Short label of a run: "<parent folder>/<file stem>"."""
    path = Path(run.path)
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def run_colour(position: int) -> str:
    """Colour of the run at `position` in the list given to a figure."""
    return RUN_COLOURS[position % len(RUN_COLOURS)]


def check_stat(run, stat: str) -> None:
    """Raise UsageError unless `stat` is recorded in `run`."""
    if stat not in run.stats:
        raise UsageError(
            f"statistic {stat!r} is not in {run.path}; it records: {', '.join(run.stats)}"
        )


def check_has_records(run) -> None:
    """Raise UsageError when `run` holds no records yet."""
    if len(run.steps) == 0:
        raise UsageError(f"run {run.path} has no records yet; wait for the recorder to flush")


def log10_magnitude(values: np.ndarray) -> np.ndarray:
    """log10(|values|) as float32, with NaN where the value is NaN, infinite or zero."""
    out = np.abs(values, dtype=np.float32)  # a new array: log10 below works in place
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log10(out, out=out)
    out[~np.isfinite(out)] = np.nan
    return out


def finite_or_nan(values: np.ndarray, positive: bool = False) -> np.ndarray:
    """A float copy of `values` with non-finite (and, if `positive`, non-positive) entries NaN."""
    out = np.array(values, dtype=np.float64)
    bad = ~np.isfinite(out)
    if positive:
        bad |= out <= 0
    out[bad] = np.nan
    return out


def shared_range(arrays, symmetric: bool = False):
    """(min, max) over the finite entries of `arrays`, or None when there are none."""
    lows, highs = [], []
    for a in arrays:
        if a.size and not np.isnan(a).all():
            lows.append(float(np.nanmin(a)))
            highs.append(float(np.nanmax(a)))
    if not lows:
        return None
    low, high = min(lows), max(highs)
    if symmetric:
        bound = max(abs(low), abs(high)) or 1.0
        return -bound, bound
    if low == high:
        return low - 0.5, high + 0.5
    return low, high


def require_finite(run, stat: str, values: np.ndarray, where: str = "at any layer or record"):
    """Raise UsageError, in one sentence, when `values` of `stat` hold no finite number."""
    if not np.isfinite(np.asarray(values, dtype=np.float64)).any():
        raise UsageError(f"{run_label(run)} has no finite {stat} value {where} (all NaN or inf)")
