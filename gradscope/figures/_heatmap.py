"""Depth x step heatmaps: one panel per run on a shared log colour scale, and a two-run ratio."""

import numpy as np
import plotly.graph_objects as go

from gradscope.errors import UsageError
from gradscope.figures._common import (
    as_run_list,
    check_has_records,
    check_stat,
    log10_magnitude,
    require_finite,
    run_label,
    shared_range,
)
from gradscope.figures._layer_filter import select_layers


def depth_step_heatmap(
    runs, stat: str, types=None, pattern=None, max_steps: int = 2000, log_color: bool = True
) -> go.Figure:
    """Layers (rows, input at the top) x steps (columns) of a statistic, one panel per run.

    Panels share one colour scale, log10(|value|) by default; NaN, inf and zero cells are left
    blank. Each run is read block-averaged down to at most `max_steps` columns; hover gives
    the layer name, step and raw value.
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
        require_finite(run, stat, values)
        if log_color:
            colour = log10_magnitude(values)
        else:
            colour = values.copy()
            colour[~np.isfinite(colour)] = np.nan
        names = run.layers["name"].astype(str).to_numpy()[idx].tolist()
        # Transposed views: layers are rows, records are columns.
        panels.append((run, np.asarray(steps), names, colour.T, values.T))

    traces = []
    layout = {"annotations": []}
    # Panels after the first repeat no layer labels when their layers are the same.
    same_layers = all(p[2] == panels[0][2] for p in panels)
    width, gap = _panel_widths(len(panels), gap=0.03 if same_layers else 0.15)
    for k, (run, steps, names, z, raw) in enumerate(panels):
        suffix = "" if k == 0 else str(k + 1)
        left = k * (width + gap)
        traces.append(
            {
                "type": "heatmap",
                "x": steps,
                "y": names,
                "z": z,
                "customdata": raw,
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
            "showticklabels": k == 0 or not same_layers,
            "title": {"text": "layer (input at top)" if k == 0 else ""},
        }
        layout["annotations"].append(
            {
                "text": _panel_title(run, steps),
                "x": left + width / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
            }
        )
    colour_title = f"log10 |{stat}|" if log_color else stat
    coloraxis = {"colorscale": "Viridis", "colorbar": {"title": {"text": colour_title}}}
    bounds = shared_range([z for *_, z, _ in panels])
    if bounds is not None:
        coloraxis["cmin"], coloraxis["cmax"] = bounds
    layout.update(
        title={"text": f"{stat} by layer and step"},
        coloraxis=coloraxis,
        uirevision=f"heatmap:{stat}",
    )
    # One Figure call with plain dicts: each big array is validated and copied once.
    return go.Figure({"data": traces, "layout": layout})


def _panel_widths(n_panels: int, gap: float) -> tuple[float, float]:
    """(width, gap) of each of `n_panels` side-by-side panels, in paper fractions."""
    gap = gap if n_panels > 1 else 0.0
    return (1.0 - gap * (n_panels - 1)) / n_panels, gap


def ratio_heatmap(
    run_a, run_b, stat: str, types=None, pattern=None, max_steps: int = 2000
) -> go.Figure:
    """log10(A / B) of a statistic by layer and step for two runs with the same layers.

    Steps are those of run A within the range both runs cover; each is paired with run B's
    nearest column. The colour scale is centred at 0 (equal values). Raises UsageError when
    the (filtered) layer names differ or the runs share no steps.
    """
    for run in (run_a, run_b):
        check_stat(run, stat)
        check_has_records(run)
    idx_a = select_layers(run_a.layers, types=types, pattern=pattern)
    idx_b = select_layers(run_b.layers, types=types, pattern=pattern)
    names_a = run_a.layers["name"].astype(str).to_numpy()[idx_a]
    names_b = run_b.layers["name"].astype(str).to_numpy()[idx_b]
    if len(names_a) != len(names_b) or not (names_a == names_b).all():
        raise UsageError(
            f"{run_label(run_a)} and {run_label(run_b)} have different layers "
            f"({len(names_a)} vs {len(names_b)} selected); a ratio needs the same architecture "
            "(or choose common layers with types/pattern)"
        )
    low = max(int(run_a.steps[0]), int(run_b.steps[0]))
    high = min(int(run_a.steps[-1]), int(run_b.steps[-1]))
    if low > high:
        raise UsageError(f"{run_label(run_a)} and {run_label(run_b)} share no range of steps")
    steps_a, values_a = _read_range(run_a, stat, low, high, max_steps)
    steps_b, values_b = _read_range(run_b, stat, low, high, max_steps)
    nearest = _nearest_positions(steps_b, steps_a)
    a = values_a[:, idx_a].T.astype(np.float64)  # [layers, records]
    b = values_b[nearest][:, idx_b].T.astype(np.float64)
    require_finite(run_a, stat, a)
    require_finite(run_b, stat, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = a / b
    z = log10_magnitude(ratio)
    bound = shared_range([z], symmetric=True) or (-1.0, 1.0)
    label_a, label_b = run_label(run_a), run_label(run_b)
    fig = go.Figure(
        go.Heatmap(
            x=steps_a,
            y=names_a,
            z=z,
            customdata=np.stack([ratio, a, b], axis=-1),
            coloraxis="coloraxis",
            hovertemplate=(
                "%{y}<br>step %{x}<br>A / B = %{customdata[0]:.4g}"
                "<br>A = %{customdata[1]:.4g}<br>B = %{customdata[2]:.4g}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=f"{stat} ratio by layer and step: A = {label_a} / B = {label_b}",
        xaxis_title="step",
        yaxis={"title": {"text": "layer (input at top)"}, "autorange": "reversed"},
        coloraxis={
            "colorscale": "RdBu_r",
            "cmid": 0.0,
            "cmin": bound[0],
            "cmax": bound[1],
            "colorbar": {"title": {"text": "log10 |A / B|"}},
        },
        uirevision=f"ratio:{stat}",
    )
    return fig


def _panel_title(run, steps) -> str:
    records = len(run.steps)
    if len(steps) < records:
        return f"{run_label(run)} ({records} records in {len(steps)} block means)"
    return run_label(run)


def _read_range(run, stat: str, low: int, high: int, max_steps: int):
    """Block-averaged records with low <= step <= high."""
    steps, values = run.read(stat, start_step=low, stop_step=high + 1, max_records=int(max_steps))
    steps = np.asarray(steps)
    keep = (steps >= low) & (steps <= high)
    return steps[keep], np.asarray(values)[keep]


def _nearest_positions(reference: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in sorted `reference` of the entry nearest each of `wanted`."""
    right = np.clip(np.searchsorted(reference, wanted), 0, len(reference) - 1)
    left = np.clip(right - 1, 0, len(reference) - 1)
    take_left = np.abs(wanted - reference[left]) <= np.abs(reference[right] - wanted)
    return np.where(take_left, left, right)
