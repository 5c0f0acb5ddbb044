"""Flow curve: one statistic against depth, a line per run and layer type, at a step or window."""

import numpy as np
import plotly.graph_objects as go

from gradscope.errors import UsageError
from gradscope.figures._colours import run_colours
from gradscope.figures._common import (
    add_notes,
    as_run_list,
    check_has_records,
    check_stat,
    finite_or_nan,
    has_finite,
    no_finite_sentence,
    run_label,
)
from gradscope.figures._layer_filter import select_layers
from gradscope.figures._layers import layer_names, merged_layer_order, positions_in, share_layers
from gradscope.figures._words import log_axis, stat_words

WINDOW_CHUNK_RECORDS = 4096  # records read at a time when averaging a window of steps
# x of a layer: its position in the union of the runs' layer names (runs aligned by name), its
# own position, or its own position over its run's depth (0..1).
DEPTH_AXES = ("aligned", "index", "normalized")
# One line per run and layer type (conv and BatchNorm norms differ ~10x: one line through both
# zig-zags), or one line per run through every layer in depth order.
FLOW_LINES = ("by_type", "all")
SINGLE_LAYER_MARKER = 9  # marker size of a type with one layer (e.g. the fc head): no line


def flow_curve(
    runs,
    stat: str,
    step=None,
    window=None,
    depth_axis: str = "aligned",
    log_y: bool = True,
    types=None,
    pattern=None,
    lines: str = "by_type",
    colours=None,
) -> go.Figure:
    """A statistic against depth, one line per run and layer type; hover names the layer.

    `step=None` is the latest step every run has (each run's own latest is in the legend);
    otherwise each run uses its record nearest to `step` (the title says so when that is
    another step). `window=(a, b)` instead averages the records with a <= step < b.
    `depth_axis`: "aligned" (layers matched by name across runs, so a net with extra shortcut
    layers does not drift), "index" (own layer position) or "normalized" (0..1). `lines`:
    "by_type" (conv solid, BatchNorm dotted, ...) or "all" (one line through every layer).
    `colours`: {run label: colour}; by default each run's own stable colour. Non-finite values
    (and non-positive ones on a log axis) are left out; a run with no finite value at all is
    named in a note above the plot (an error if no run has one).
    """
    runs = as_run_list(runs)
    if depth_axis not in DEPTH_AXES:
        raise UsageError(f"depth_axis must be one of {DEPTH_AXES}, not {depth_axis!r}")
    if lines not in FLOW_LINES:
        raise UsageError(f"lines must be one of {FLOW_LINES}, not {lines!r}")
    if step is not None and window is not None:
        raise UsageError("give either step or window, not both")
    for run in runs:
        check_stat(run, stat)
        check_has_records(run)
    if window is not None:
        start, stop = _check_window(window)
    elif step is not None:
        _check_step_in_runs(runs, int(step))
    common_latest = min(int(run.steps[-1]) for run in runs)
    x_of, x_title = _depth_positions(runs, depth_axis)

    fig = go.Figure()
    snapped = set()  # steps used instead of the one asked for
    notes, drawn_values = [], []
    for run, colour in zip(runs, run_colours(runs, colours), strict=True):
        idx = select_layers(run.layers, types=types, pattern=pattern)
        if window is not None:
            profile, where = _window_mean(run, stat, start, stop)
        else:
            wanted = common_latest if step is None else int(step)
            profile, chosen = _record_at(run, stat, wanted)
            where = f"step {chosen}"
            if chosen != wanted:
                snapped.add(chosen)
        if not has_finite(profile[idx]):
            notes.append(no_finite_sentence(run, stat, f"at {where}"))
            continue
        label = run_label(run)
        own_latest = int(run.steps[-1])
        legend = f"{label} ({where}" + (
            f"; latest {own_latest})" if window is None and own_latest > chosen else ")"
        )
        y = finite_or_nan(profile, positive=log_y)
        drawn_values.append(y[idx])
        for group, members in _line_groups(run, idx, lines):
            fig.add_trace(
                _line(run, stat, label, legend, colour, group, members, x_of(run), y, lines)
            )
    if not drawn_values:
        raise UsageError("; ".join(notes))
    add_notes(fig, notes)
    y_axis = log_axis(np.concatenate(drawn_values)) if log_y else {}
    when = _describe(step, window, snapped, runs)
    fig.update_layout(
        title={"text": f"{stat_words(stat)} across depth, {when}"},
        xaxis_title=x_title,
        yaxis={"title": {"text": stat}, **y_axis},
        hovermode="closest",
        uirevision=f"flow:{stat}:{depth_axis}:{lines}",
        legend={"groupclick": "toggleitem", "tracegroupgap": 8},
    )
    return fig


def _line(run, stat, label, legend, colour, group, members, x, y, lines) -> go.Scatter:
    """One run's line through the layers at `members` (one layer type, or all)."""
    names = run.layers["name"].astype(str).to_numpy()[members]
    kinds = run.layers["type"].astype(str).to_numpy()[members]
    single = len(members) == 1
    return go.Scatter(
        x=x[members],
        y=y[members],
        mode="markers" if single else "lines+markers",
        name=f"{group} ({len(members)})" if lines == "by_type" else legend,
        legendgroup=label,
        legendgrouptitle={"text": legend} if lines == "by_type" else None,
        line={"color": colour, "dash": type_dash(group) if lines == "by_type" else "solid"},
        marker={"size": SINGLE_LAYER_MARKER if single else 4, "color": colour},
        customdata=np.column_stack([names, kinds, members]),
        hovertemplate=(
            "%{customdata[0]} (%{customdata[1]}, layer %{customdata[2]})"
            f"<br>{stat} = %{{y:.4g}}<extra>{label}</extra>"
        ),
    )


def type_dash(type_name: str) -> str:
    """Line style of a layer type in the flow curve: conv solid, normalization dotted, linear
    dashed, anything else dash-dotted."""
    if "Conv" in type_name:
        return "solid"
    if "Norm" in type_name:
        return "dot"
    if "Linear" in type_name:
        return "dash"
    return "dashdot"


def _line_groups(run, idx, lines):
    """[(legend name, layer positions)]: one per layer type (most layers first), or one."""
    if lines == "all":
        return [("all layers", idx)]
    kinds = run.layers["type"].astype(str).to_numpy()[idx]
    groups = {}
    for position, kind in zip(idx, kinds, strict=True):
        groups.setdefault(kind, []).append(position)
    dashes = ("solid", "dot", "dash", "dashdot")
    ordered = sorted(
        groups.items(), key=lambda item: (-len(item[1]), dashes.index(type_dash(item[0])), item[0])
    )
    return [(kind, np.asarray(members)) for kind, members in ordered]


def _depth_positions(runs, depth_axis):
    """(run -> x of each of its layers, x-axis title) for the chosen depth axis."""
    if depth_axis == "index":
        return (lambda run: np.arange(len(run.layers))), "layer index (input = 0)"
    name_lists = [layer_names(run) for run in runs]
    if depth_axis == "aligned" and len(runs) > 1 and share_layers(name_lists):
        order = merged_layer_order(name_lists)
        positions = {
            id(run): positions_in(order, names) for run, names in zip(runs, name_lists, strict=True)
        }
        title = "layer index, runs aligned by layer name (input = 0)"
        if len(order) > max(len(names) for names in name_lists):
            title += f"; {len(order)} distinct layers"
        return (lambda run: positions[id(run)]), title
    if depth_axis == "aligned" and len(runs) > 1:
        title = "normalized depth (0 = input): the runs share too few layer names to align"
    elif depth_axis == "aligned":
        return (lambda run: np.arange(len(run.layers))), "layer index (input = 0)"
    else:
        title = "normalized depth (0 = input)"
    return (lambda run: np.arange(len(run.layers)) / max(len(run.layers) - 1, 1)), title


def _describe(step, window, snapped, runs) -> str:
    if window is not None:
        return f"mean over steps {window[0]} <= step < {window[1]}"
    if step is None:
        latest = min(int(run.steps[-1]) for run in runs)
        if len(runs) == 1:
            return f"latest record (step {latest})"
        used = ", ".join(str(s) for s in sorted(snapped))
        nearest = f"; nearest records: step {used}" if used else ""
        return f"latest step all runs have (step {latest}{nearest})"
    if snapped:
        used = ", ".join(str(s) for s in sorted(snapped))
        return f"nearest record to step {step} (step {used})"
    return f"step {step}"


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


def _record_at(run, stat: str, step: int):
    """(stat row, its step) of the run's record nearest to `step` (the earlier one on a tie)."""
    steps = np.asarray(run.steps)
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
