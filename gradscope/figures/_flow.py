"""Flow curve: one statistic against depth, one line per run, at a step or over a window."""

import numpy as np
import plotly.graph_objects as go

from gradscope.errors import UsageError
from gradscope.figures._common import (
    as_run_list,
    check_has_records,
    check_stat,
    finite_or_nan,
    require_finite,
    run_colour,
    run_label,
)
from gradscope.figures._layer_filter import select_layers

WINDOW_CHUNK_RECORDS = 4096  # records read at a time when averaging a window of steps
DEPTH_AXES = ("index", "normalized")


def flow_curve(
    runs,
    stat: str,
    step=None,
    window=None,
    depth_axis: str = "index",
    log_y: bool = True,
    types=None,
    pattern=None,
) -> go.Figure:
    """A statistic against depth, one line per run; hover names the layer.

    `step=None` uses each run's latest record; otherwise each run uses its record nearest to
    `step` (the title says so when that is another step). `window=(a, b)` instead averages the
    records with a <= step < b.
    `depth_axis` is "index" (layer position) or "normalized" (0..1, to compare nets of
    different depth). Non-finite values (and non-positive ones on a log axis) are left out.
    """
    runs = as_run_list(runs)
    if depth_axis not in DEPTH_AXES:
        raise UsageError(f"depth_axis must be one of {DEPTH_AXES}, not {depth_axis!r}")
    if step is not None and window is not None:
        raise UsageError("give either step or window, not both")
    for run in runs:
        check_stat(run, stat)
        check_has_records(run)
    if window is not None:
        start, stop = _check_window(window)
    elif step is not None:
        _check_step_in_runs(runs, int(step))

    fig = go.Figure()
    snapped = set()  # steps used instead of the one asked for
    for position, run in enumerate(runs):
        idx = select_layers(run.layers, types=types, pattern=pattern)
        if window is not None:
            profile, where = _window_mean(run, stat, start, stop)
        else:
            profile, chosen = _record_at(run, stat, step)
            where = f"step {chosen}"
            if step is not None and chosen != int(step):
                snapped.add(chosen)
        require_finite(run, stat, profile[idx], f"at {where}")
        n_layers = len(run.layers)
        x = idx if depth_axis == "index" else idx / max(n_layers - 1, 1)
        names = run.layers["name"].astype(str).to_numpy()[idx]
        kinds = run.layers["type"].astype(str).to_numpy()[idx]
        label = run_label(run)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=finite_or_nan(profile[idx], positive=log_y),
                mode="lines+markers",
                name=f"{label} ({where})",
                line={"color": run_colour(position)},
                marker={"size": 4},
                customdata=np.column_stack([names, kinds, idx]),
                hovertemplate=(
                    "%{customdata[0]} (%{customdata[1]}, layer %{customdata[2]})"
                    f"<br>{stat} = %{{y:.4g}}<extra>{label}</extra>"
                ),
            )
        )
    fig.update_layout(
        title=f"{stat} across depth, {_describe(step, window, snapped)}",
        xaxis_title="layer index" if depth_axis == "index" else "normalized depth (0 = input)",
        yaxis_title=stat,
        yaxis_type="log" if log_y else "linear",
        hovermode="closest",
        uirevision=f"flow:{stat}:{depth_axis}",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _describe(step, window, snapped) -> str:
    if window is not None:
        return f"mean over steps {window[0]} <= step < {window[1]}"
    if snapped:
        used = ", ".join(str(s) for s in sorted(snapped))
        return f"nearest record to step {step} (step {used})"
    if step is not None:
        return f"step {step}"
    return "latest record"


def _check_window(window) -> tuple[int, int]:
    try:
        start, stop = (int(v) for v in window)
    except (TypeError, ValueError) as e:
        raise UsageError(f"window must be a pair of steps (start, stop), not {window!r}") from e
    if start >= stop:
        raise UsageError(f"window start {start} must be below its stop {stop}")
    return start, stop


def _check_step_in_runs(runs, step: int) -> None:
    last = max(int(run.steps[-1]) for run in runs)
    if step > last:
        raise UsageError(f"step {step} is beyond the runs: the last recorded step is {last}")
    for run in runs:
        if step < int(run.steps[0]):
            raise UsageError(
                f"step {step} is before the first record of {run_label(run)} "
                f"(step {int(run.steps[0])})"
            )


def _record_at(run, stat: str, step):
    """(stat row, its step) of the run's record nearest to `step` (latest if None; the
    earlier one on a tie)."""
    steps = np.asarray(run.steps)
    if step is None:
        position = len(steps) - 1
    else:
        after = min(int(np.searchsorted(steps, int(step), side="left")), len(steps) - 1)
        before = max(after - 1, 0)
        nearer_before = abs(int(step) - int(steps[before])) <= abs(int(steps[after]) - int(step))
        position = before if nearer_before else after
    chosen = int(steps[position])
    got_steps, values = run.read(stat, start_step=chosen, stop_step=chosen + 1)
    rows = np.flatnonzero(np.asarray(got_steps) == chosen)
    if rows.size == 0:
        raise UsageError(f"step {chosen} could not be read back from {run.path}")
    return np.asarray(values[rows[-1]], dtype=np.float64), chosen


def _window_mean(run, stat: str, start: int, stop: int):
    """Mean of each layer over the records with start <= step < stop, read chunk by chunk.

    NaN entries (no value at that record) are left out of a layer's mean; inf is kept.
    """
    steps = np.asarray(run.steps)
    first, last = np.searchsorted(steps, [start, stop], side="left")
    if first >= last:
        raise UsageError(
            f"{run_label(run)} has no record with {start} <= step < {stop} "
            f"(it records steps {int(steps[0])}..{int(steps[-1])})"
        )
    total = np.zeros(len(run.layers))
    count = np.zeros(len(run.layers))
    for begin in range(first, last, WINDOW_CHUNK_RECORDS):
        end = min(begin + WINDOW_CHUNK_RECORDS, last)
        lo = int(steps[begin])
        hi = int(steps[end]) if end < len(steps) else int(steps[end - 1]) + 1
        hi = min(hi, stop)
        got_steps, values = run.read(stat, start_step=lo, stop_step=hi)
        values = np.asarray(values, dtype=np.float64)
        got_steps = np.asarray(got_steps)
        values = values[(got_steps >= lo) & (got_steps < hi)]
        present = ~np.isnan(values)  # NaN: the layer had no value at that record
        total += np.where(present, values, 0.0).sum(axis=0)
        count += present.sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = total / count
    return mean, f"{int(last - first)} records"
