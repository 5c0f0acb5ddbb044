"""The gradient noise scale against step (McCandlish et al. 2018): per layer group and for the
model, with the batch size in use marked."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradscope.errors import UsageError
from gradscope.figures._colours import PALETTE, assign_colours
from gradscope.figures._common import add_notes_above_panels, as_run_list, run_label
from gradscope.figures._widths import DASHES, LEGEND_MARGIN, LEGEND_ROW, MIN_HEIGHT, layer_group
from gradscope.figures._words import log_axis
from gradscope.store import MODEL_COLUMN, NOISE_SCALE_WINDOW, noise_estimates, noise_scale

MODEL_LINE = {"color": "black", "width": 3}
BATCH_LINE = {"color": "#6c757d", "width": 2, "dash": "dash"}


def noise_scale_curves(runs, window: int = NOISE_SCALE_WINDOW, colours=None) -> go.Figure:
    """The simple noise scale B_noise = tr(Sigma) / |G|^2 against step, one panel per run:
    one line per layer group (the layers of repeated blocks together, `layer_group`: their
    |G|^2 and tr(Sigma) estimates summed), the whole model's in black, and the batch size in
    use (the large batch, in the same units: rows) as a dashed grey line. Each point divides
    the means of the estimates over the last `window` records. Log y axis.

    Training at a batch far above B_noise buys little per step; far below, steps are mostly
    noise (McCandlish et al.'s critical batch size is about B_noise).

    `colours`: {group: colour}. A run without a measured noise scale (one small batch a step,
    or no gns_* statistics) is said above the panels; when no run has one, UsageError.
    """
    runs = as_run_list(runs)
    panels, notes = [], []
    for run in runs:
        try:
            panels.append(_Panel(run, window))
        except UsageError as e:
            notes.append(str(e))
    if not panels:
        raise UsageError("; ".join(notes))
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[p.label for p in panels], shared_yaxes=True
    )
    groups = list(dict.fromkeys(g for panel in panels for g in panel.groups))
    palette = assign_colours(groups, taken=())
    palette.update(colours or {})
    dashes = {g: DASHES[(i // len(PALETTE)) % len(DASHES)] for i, g in enumerate(groups)}
    drawn = []
    for col, panel in enumerate(panels, start=1):
        title = {"text": panel.label} if len(panels) > 1 else None
        for name in [*panel.groups, MODEL_COLUMN]:
            values = panel.frame[name].to_numpy()
            drawn.append(values)
            model = name == MODEL_COLUMN
            fig.add_trace(
                go.Scatter(
                    x=panel.steps,
                    y=values,
                    mode="lines",
                    name="model" if model else name,
                    legendgroup=str(col),
                    legendgrouptitle=title,
                    line=MODEL_LINE if model else {"color": palette[name], "dash": dashes[name]},
                    hovertemplate=f"{name}<br>step %{{x}}<br>noise scale %{{y:.4g}}"
                    f"<extra>{panel.label}</extra>",
                ),
                row=1,
                col=col,
            )
        drawn.append(panel.batch)
        fig.add_trace(
            go.Scatter(
                x=panel.steps,
                y=panel.batch,
                mode="lines",
                line_shape="hv",
                name="batch size",
                legendgroup=str(col),
                legendgrouptitle=title,
                line=BATCH_LINE,
                hovertemplate=f"batch size %{{y:.0f}}<br>step %{{x}}<extra>{panel.label}</extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="step", row=1, col=col)
    add_notes_above_panels(fig, notes)
    axis = log_axis(np.concatenate(drawn))
    for col in range(1, len(panels) + 1):
        fig.update_yaxes(axis, row=1, col=col)
    fig.update_yaxes(title_text="examples (rows)", row=1, col=1)
    entries = sum(len(panel.groups) + 2 for panel in panels) + (
        len(panels) if len(panels) > 1 else 0
    )
    fig.update_layout(
        height=max(MIN_HEIGHT, LEGEND_MARGIN + LEGEND_ROW * entries),  # the legend, uncut
        title={"text": f"Gradient noise scale by layer group (mean of {window} records)"},
        hovermode="closest",
        legend={"groupclick": "toggleitem"},
        uirevision=f"noise:{window}",
    )
    return fig


class _Panel:
    """One run's noise scale per layer group and for the model, and its batch size."""

    def __init__(self, run, window: int):
        self.label = run_label(run)
        estimates = noise_estimates(run)  # UsageError: no gns_* statistics
        measured = np.isfinite(estimates.grad_sq).any(axis=0)
        members: dict[str, list[str]] = {}
        for name, has in zip(estimates.layers, measured, strict=True):
            if has:
                members.setdefault(layer_group(name), []).append(name)
        self.frame = noise_scale(run, window, groups=members)  # UsageError: not measured
        self.groups = list(members)
        self.steps = estimates.steps
        self.batch = estimates.batch
