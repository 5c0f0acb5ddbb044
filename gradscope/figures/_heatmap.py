"""Depth x step heatmaps: one panel per run on a shared log colour scale, and a two-run ratio."""

import math

import numpy as np
import plotly.graph_objects as go

from gradscope.errors import UsageError
from gradscope.figures._colours import run_colours
from gradscope.figures._common import (
    as_run_list,
    check_has_records,
    check_stat,
    has_finite,
    log10_magnitude,
    no_finite_sentence,
    require_finite,
    run_label,
    shared_range,
    short_labels,
)
from gradscope.figures._layer_filter import select_layers
from gradscope.figures._layers import common_layers, layer_names, merged_layer_order, share_layers
from gradscope.figures._nonfinite_marks import nonfinite_marks
from gradscope.figures._words import decade_ticks, stat_words

ROW_PX = 6  # pixels per layer row: 115 rows of ResNet-56 make a 690 px plot
MIN_PLOT_PX, MAX_PLOT_PX = 260, 1800  # plot-area height limits (deeper nets get thinner rows)
LABEL_PX = 12  # a row label needs this much height: fewer rows get a label when rows are thin
LABEL_FONT_PX = 10  # font size of the row labels
CHAR_PX = 6.2  # width of one label character at LABEL_FONT_PX, for the gap between panels
NOMINAL_WIDTH_PX = 1100  # figure width assumed for that gap when the layout gives none
MARGIN_PX = {"t": 100, "b": 60}  # title, panel titles and notes above; step axis below


def heatmap_height(n_rows: int) -> int:
    """Figure height in pixels for `n_rows` layer rows: readable rows, within limits."""
    plot = min(max(n_rows * ROW_PX, MIN_PLOT_PX), MAX_PLOT_PX)
    return int(plot + MARGIN_PX["t"] + MARGIN_PX["b"])


def row_axis(names: list[str], height: int) -> dict:
    """Layout of the layer axis: its title, and ticks that never overlap.

    Every row is labelled when the labels fit at this height. Otherwise only the rows where a
    block starts are (the finest level of the layer names' dotted prefixes, "layer2.3", whose
    starts fit, e.g. each residual block of a ResNet-56 and each stage of a ResNet-1202), or
    every k-th row when the names have no blocks; the title says so, and hover names each row.
    """
    plot = height - MARGIN_PX["t"] - MARGIN_PX["b"]
    gap = max(1, math.ceil(LABEL_PX * len(names) / max(plot, 1)))  # rows between two labels
    title = "layer (input at top)"
    if gap == 1:
        shown = names
    else:
        starts = _block_starts(names, gap)
        if starts is not None:
            shown = [names[i] for i in starts]
            title += ": block starts labelled, hover names each row"
        else:
            shown = names[::gap]
            title += f": every {_ordinal(gap)} row labelled, hover names each row"
    return {
        "title": {"text": title},
        "tickmode": "array",
        "tickvals": shown,
        "ticktext": shown,
        "tickfont": {"size": LABEL_FONT_PX},
    }


def _block_starts(names: list[str], gap: int) -> list[int] | None:
    """Rows where a block of dotted names starts, at the finest level whose starts are at most
    one per `gap` rows on average; of two starts within `gap` rows, the larger block's is kept
    (the earlier on a tie). None when only single rows make blocks."""
    parts = [name.split(".") for name in names]
    for level in range(max(len(p) for p in parts) - 1, 0, -1):
        keys = [".".join(p[:level]) for p in parts]
        starts = [i for i, key in enumerate(keys) if i == 0 or key != keys[i - 1]]
        if len(starts) * gap > len(names) or len(starts) == len(names):
            continue
        size = dict(zip(starts, np.diff([*starts, len(names)]).tolist(), strict=True))
        kept: list[int] = []
        for i in starts:
            if not kept or i - kept[-1] >= gap:
                kept.append(i)
            elif size[i] > size[kept[-1]] and (len(kept) < 2 or i - kept[-2] >= gap):
                kept[-1] = i
        return kept
    return None


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def depth_step_heatmap(
    runs,
    stat: str,
    types=None,
    pattern=None,
    max_steps: int = 2000,
    log_color: bool = True,
    colours=None,
    height: int | None = None,
) -> go.Figure:
    """Layers (rows, input at the top) x steps (columns) of a statistic, one panel per run.

    Panels share one colour scale, log10(|value|) by default; NaN, inf and zero cells are left
    blank. Runs whose layers line up by name share their rows (a layer only one run has is a
    blank row in the others), so the row labels are drawn once, on the left. The height grows
    with the number of rows (or is `height` pixels); every row is labelled where the labels
    fit, else each block's first row (see `row_axis`). Each run is read block-averaged down to
    at most `max_steps` columns; hover gives the layer name, step and raw value. A run with no
    finite value says so in its panel (an error if no run has one). Where the flight recorder
    stored the origin of a non-finite value, a red cross marks its step and layer (a dotted line
    its step alone).
    """
    runs = as_run_list(runs)
    panels = []
    for run in runs:
        check_stat(run, stat)
        check_has_records(run)
        idx = select_layers(run.layers, types=types, pattern=pattern)
        steps, values = run.read(stat, max_records=int(max_steps))
        values = np.asarray(values, dtype=np.float32)
        if len(idx) != values.shape[1]:
            values = values[:, idx]
        panels.append((run, np.asarray(steps), layer_names(run, idx), values))
    finite = [has_finite(values) for *_, values in panels]
    if not any(finite):
        raise UsageError("; ".join(no_finite_sentence(p[0], stat) for p in panels))

    name_lists = [names for _, _, names, _ in panels]
    shared = len(panels) == 1 or share_layers(name_lists)
    rows = merged_layer_order(name_lists) if shared else None
    n_rows = len(rows) if shared else max(len(n) for n in name_lists)
    height = int(height or heatmap_height(n_rows))
    longest = max(len(name) for names in name_lists for name in names)
    gap = 0.02 if shared else min(0.3, 0.03 + longest * CHAR_PX / NOMINAL_WIDTH_PX)
    width, gap = _panel_widths(len(panels), gap)

    traces, notes, marks = [], [], []
    layout = {"annotations": [], "shapes": []}
    colour_of = run_colours(runs, colours)
    for k, (run, steps, names, values) in enumerate(panels):
        suffix = "" if k == 0 else str(k + 1)
        left = k * (width + gap)
        y_names = rows if shared else names
        if shared and names != rows:
            values = _on_rows(values, names, rows)
        colour = log10_magnitude(values) if log_color else _finite_copy(values)
        traces.append(
            {
                "type": "heatmap",
                "x": steps,
                "y": y_names,
                "z": colour.T,  # layers are rows, records are columns
                "customdata": values.T,
                "coloraxis": "coloraxis",
                "xaxis": f"x{suffix}",
                "yaxis": f"y{suffix}",
                "hovertemplate": (
                    f"%{{y}}<br>step %{{x}}<br>{stat} = %{{customdata:.4g}}"
                    f"<extra>{run_label(run)}</extra>"
                ),
            }
        )
        layout[f"xaxis{suffix}"] = {
            "domain": [left, left + width],
            "anchor": f"y{suffix}",
            "title": {"text": "step"},
        }
        layout[f"yaxis{suffix}"] = {
            "anchor": f"x{suffix}",
            "autorange": "reversed",
            "automargin": True,
            "showticklabels": k == 0 or not shared,
            **row_axis(y_names, height),
            **({"title": {"text": ""}} if k > 0 else {}),
            **({"matches": "y", "ticks": ""} if shared and k > 0 else {}),
        }
        layout["annotations"].append(_panel_title(run, steps, left + width / 2, colour_of[k]))
        mark_traces, mark_shapes = nonfinite_marks(run, y_names, suffix)
        marks.extend(mark_traces)
        layout["shapes"].extend(mark_shapes)
        if not finite[k]:
            sentence = no_finite_sentence(run, stat)
            notes.append(sentence)
            layout["annotations"].append(_panel_message(sentence, left + width / 2))
    layout.update(
        title={"text": f"{stat_words(stat)} by layer and step"},
        coloraxis=_colour_axis(stat, [t["z"] for t in traces], log_color),
        height=height,
        margin=MARGIN_PX,
        uirevision=f"heatmap:{stat}",
    )
    # One Figure call with plain dicts: each big array is validated and copied once.
    fig = go.Figure({"data": traces + marks, "layout": layout})
    if notes:  # each is said in its own panel; the dashboard lists them in the panel's message
        fig.update_layout(meta={"notes": notes})
    return fig


def _on_rows(values: np.ndarray, names: list[str], rows: list[str]) -> np.ndarray:
    """`values` [records, names] spread onto `rows` (a superset), NaN where a run lacks a row."""
    out = np.full((values.shape[0], len(rows)), np.nan, dtype=np.float32)
    where = {name: i for i, name in enumerate(rows)}
    out[:, [where[name] for name in names]] = values
    return out


def _finite_copy(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    out[~np.isfinite(out)] = np.nan
    return out


def _colour_axis(stat: str, zs, log_color: bool) -> dict:
    """One colour scale over every panel: log10 values, ticks at decades labelled 10^k."""
    axis = {"colorscale": "Viridis", "colorbar": {"title": {"text": stat}}}
    bounds = shared_range(zs)
    if bounds is not None:
        axis["cmin"], axis["cmax"] = bounds
        if log_color:
            axis["colorbar"].update(decade_ticks(*bounds))
    return axis


def _panel_widths(n_panels: int, gap: float) -> tuple[float, float]:
    """(width, gap) of each of `n_panels` side-by-side panels, in paper fractions."""
    gap = gap if n_panels > 1 else 0.0
    return (1.0 - gap * (n_panels - 1)) / n_panels, gap


def _panel_title(run, steps, x: float, colour: str) -> dict:
    """The run's name over its panel, after a swatch of the run's colour."""
    records = len(run.steps)
    text = f'<span style="color:{colour}">■</span> {run_label(run)}'
    if len(steps) < records:
        text += f" ({records} records in {len(steps)} block means)"
    return {
        "text": text,
        "x": x,
        "y": 1.0,
        "xref": "paper",
        "yref": "paper",
        "xanchor": "center",
        "yanchor": "bottom",
        "showarrow": False,
    }


def _panel_message(sentence: str, x: float) -> dict:
    """A sentence in the middle of a panel that has nothing to draw."""
    return {
        "text": sentence.replace(" has no", "<br>has no"),
        "x": x,
        "y": 0.5,
        "xref": "paper",
        "yref": "paper",
        "showarrow": False,
        "font": {"color": "#a61b1b"},
    }


def ratio_heatmap(
    run_a,
    run_b,
    stat: str,
    types=None,
    pattern=None,
    max_steps: int = 2000,
    height: int | None = None,
) -> go.Figure:
    """log10(A / B) of a statistic by layer and step, over the layers both runs have: run A
    is the numerator (red where it has more), B the denominator, as title and colour bar say.

    Layers are matched by name (in A's depth order); the title says how many of each run's
    layers were left out. Steps are those of run A within the range both runs cover; each is
    paired with run B's nearest column. The colour scale is centred at 0 (equal values).
    Raises UsageError when the runs share no (selected) layer name or no steps.
    """
    for run in (run_a, run_b):
        check_stat(run, stat)
        check_has_records(run)
    idx_a = select_layers(run_a.layers, types=types, pattern=pattern)
    idx_b = select_layers(run_b.layers, types=types, pattern=pattern)
    label_a, label_b = run_label(run_a), run_label(run_b)
    names_a, names_b = layer_names(run_a, idx_a), layer_names(run_b, idx_b)
    keep_a, keep_b = common_layers(names_a, names_b)
    if not keep_a:
        raise UsageError(
            f"{label_a} and {label_b} have no layer name in common "
            f"({len(names_a)} and {len(names_b)} layers selected); a ratio compares layers "
            "of the same name"
        )
    low = max(int(run_a.steps[0]), int(run_b.steps[0]))
    high = min(int(run_a.steps[-1]), int(run_b.steps[-1]))
    if low > high:
        raise UsageError(f"{label_a} and {label_b} share no range of steps")
    steps_a, values_a = _read_range(run_a, stat, low, high, max_steps)
    steps_b, values_b = _read_range(run_b, stat, low, high, max_steps)
    nearest = nearest_positions(steps_b, steps_a)
    a = values_a[:, idx_a[keep_a]].T.astype(np.float64)  # [layers, records]
    b = values_b[nearest][:, idx_b[keep_b]].T.astype(np.float64)
    require_finite(run_a, stat, a)
    require_finite(run_b, stat, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = a / b
    z = log10_magnitude(ratio)
    bound = shared_range([z], symmetric=True) or (-1.0, 1.0)
    names = [names_a[i] for i in keep_a]
    height = int(height or heatmap_height(len(names)))
    top, bottom = short_labels([run_a, run_b])
    fig = go.Figure(
        go.Heatmap(
            x=steps_a,
            y=names,
            z=z,
            customdata=np.stack([ratio, a, b], axis=-1),
            coloraxis="coloraxis",
            hovertemplate=(
                f"%{{y}}<br>step %{{x}}<br>{top} / {bottom} = %{{customdata[0]:.4g}}"
                f"<br>{top} = %{{customdata[1]:.4g}}<br>{bottom} = %{{customdata[2]:.4g}}"
                "<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title={
            "text": f"{stat_words(stat)} ratio {top} / {bottom} by layer and step"
            f"<br><sup>red: {top} more, blue: {bottom} more; "
            f"{_left_out(label_a, names_a, label_b, names_b, len(names))}</sup>"
        },
        xaxis_title="step",
        yaxis={"autorange": "reversed", "automargin": True, **row_axis(names, height)},
        coloraxis={
            "colorscale": "RdBu_r",
            "cmid": 0.0,
            "cmin": bound[0],
            "cmax": bound[1],
            "colorbar": {
                "title": {"text": f"{top} / {bottom}:<br>red = {top} more"},
                **decade_ticks(*bound),
            },
        },
        height=height,
        margin=MARGIN_PX,
        uirevision=f"ratio:{stat}",
    )
    return fig


def _left_out(label_a, names_a, label_b, names_b, n_common: int) -> str:
    """What the ratio compares: the layers both runs have, and how many each had besides."""
    parts = [f"{n_common} layers both runs have"]
    for label, names in ((label_a, names_a), (label_b, names_b)):
        extra = len(names) - n_common
        if extra:
            parts.append(f"{extra} only in {label} left out")
    return "; ".join(parts)


def _read_range(run, stat: str, low: int, high: int, max_steps: int):
    """Block-averaged records with low <= step <= high."""
    steps, values = run.read(stat, start_step=low, stop_step=high + 1, max_records=int(max_steps))
    steps = np.asarray(steps)
    keep = (steps >= low) & (steps <= high)
    return steps[keep], np.asarray(values)[keep]


def nearest_positions(reference: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in sorted `reference` of the entry nearest each of `wanted`."""
    right = np.clip(np.searchsorted(reference, wanted), 0, len(reference) - 1)
    left = np.clip(right - 1, 0, len(reference) - 1)
    take_left = np.abs(wanted - reference[left]) <= np.abs(reference[right] - wanted)
    return np.where(take_left, left, right)
