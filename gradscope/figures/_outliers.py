"""Activation outliers: per layer, the channel of largest RMS against step, for the layers of
highest kurtosis; a persistent outlier channel is a flat line."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradscope.errors import UsageError
from gradscope.figures._colours import assign_colours
from gradscope.figures._common import add_notes_above_panels, as_run_list, run_label
from gradscope.figures._layer_filter import select_layers
from gradscope.figures._widths import LEGEND_MARGIN, LEGEND_ROW, MIN_HEIGHT

CHANNEL_STAT = "act_outlier_channel"  # per layer and record: the channel of largest RMS
KURTOSIS_STAT = "act_kurtosis"  # what the layers are ranked by
DEFAULT_OUTLIER_LAYERS = 8
RECENT_FRACTION = 0.25  # the layers' kurtosis is judged over the latest quarter of records


def outlier_channels(
    runs,
    top: int = DEFAULT_OUTLIER_LAYERS,
    types=None,
    pattern=None,
    max_steps: int = 2000,
    colours=None,
) -> go.Figure:
    """The channel (unit) of each layer's output with the largest RMS, against step, one panel
    per run: one line per layer, for the `top` layers of highest kurtosis (the median
    `act_kurtosis` over the latest quarter of records; all layers chosen when the run has no
    kurtosis). A layer whose outlier is one channel draws a flat line; the legend says which
    channel it most often is and in what share of records.

    `types`, `pattern`: the layers to choose from (module class names, a glob on names).
    Runs of more than `max_steps` records show every k-th record (an index has no mean).
    `colours`: {layer name: colour}. A run without the statistic is said above the panels;
    when no run has it, UsageError.
    """
    runs = as_run_list(runs)
    if not isinstance(top, (int, np.integer)) or isinstance(top, bool) or top < 1:
        raise UsageError(f"top must be a positive number of layers, not {top!r}")
    panels, notes = [], []
    for run in runs:
        if CHANNEL_STAT not in run.stats:
            notes.append(
                f"{run_label(run)} has no {CHANNEL_STAT} (recorded by gradscope with the "
                "activation statistics)"
            )
            continue
        panel = _Panel(run, int(top), types, pattern, max_steps)
        if not panel.layers:
            notes.append(f"{panel.label} has no finite {CHANNEL_STAT} value")
            continue
        panels.append(panel)
    if not panels:
        raise UsageError("; ".join(notes))
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[p.label for p in panels], shared_yaxes=False
    )
    palette = assign_colours([name for panel in panels for name, *_ in panel.layers], taken=())
    palette.update(colours or {})
    for col, panel in enumerate(panels, start=1):
        title = {"text": panel.label} if len(panels) > 1 else None
        for name, channels, kurtosis, legend in panel.layers:
            fig.add_trace(
                go.Scatter(
                    x=panel.steps,
                    y=channels,
                    customdata=kurtosis,
                    mode="lines+markers",
                    line_shape="hv",
                    marker={"size": 4},
                    name=legend,
                    legendgroup=str(col),
                    legendgrouptitle=title,
                    line={"color": palette[name]},
                    hovertemplate=f"{name}<br>step %{{x}}<br>channel %{{y}}<br>kurtosis "
                    f"%{{customdata:.3g}}<extra>{panel.label}</extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="step", row=1, col=col)
        fig.update_yaxes(title_text="channel of largest RMS", rangemode="tozero", row=1, col=col)
    add_notes_above_panels(fig, notes)
    entries = sum(len(panel.layers) for panel in panels) + (len(panels) if len(panels) > 1 else 0)
    chosen = max(len(panel.layers) for panel in panels)
    fig.update_layout(
        height=max(MIN_HEIGHT, LEGEND_MARGIN + LEGEND_ROW * entries),  # the legend, uncut
        title={"text": f"Outlier channel by step: the {chosen} layers of highest kurtosis"},
        hovermode="closest",
        legend={"groupclick": "toggleitem"},
        uirevision=f"outliers:{top}:{types}:{pattern}",
    )
    return fig


class _Panel:
    """One run's chosen layers: (name, channel per shown record, kurtosis, legend) each."""

    def __init__(self, run, top: int, types, pattern, max_steps: int):
        self.label = run_label(run)
        names = run.layers["name"].astype(str).to_numpy()
        candidates = select_layers(run.layers, types=types, pattern=pattern)
        stride = max(1, -(-len(run.steps) // max_steps))
        self.steps = np.asarray(run.steps)[::stride]
        channels = run.stat(CHANNEL_STAT)[::stride].astype(np.float64)
        kurtosis = (
            run.stat(KURTOSIS_STAT)[::stride].astype(np.float64)
            if KURTOSIS_STAT in run.stats
            else np.full(channels.shape, np.nan)
        )
        measured = [j for j in candidates if np.isfinite(channels[:, j]).any()]
        recent = kurtosis[-max(1, int(np.ceil(len(kurtosis) * RECENT_FRACTION))) :]
        score = {j: _median(recent[:, j]) for j in measured}
        chosen = sorted(measured, key=lambda j: -score[j])[:top]
        self.layers = [
            (names[j], channels[:, j], kurtosis[:, j], _legend(names[j], channels[:, j]))
            for j in sorted(chosen)  # in depth order
        ]


def _median(values: np.ndarray) -> float:
    """The median of the finite values, -1 for none (ranked last)."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else -1.0


def _legend(name: str, channels: np.ndarray) -> str:
    """ "layer: channel c in 97% of records" (its most frequent channel)."""
    finite = channels[np.isfinite(channels)].astype(np.int64)
    values, counts = np.unique(finite, return_counts=True)
    most = int(values[np.argmax(counts)])
    return f"{name}: channel {most} in {counts.max() / len(finite):.0%}"
