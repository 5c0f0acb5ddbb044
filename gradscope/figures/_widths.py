"""Coordinate check (Yang et al., muP): a statistic against width, one line per layer group."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradscope.errors import UsageError
from gradscope.figures._colours import PALETTE, assign_colours
from gradscope.figures._common import add_notes_above_panels, as_run_list, check_stat, run_label
from gradscope.figures._words import log_axis_labelled, stat_words
from gradscope.store import probe_layout, probe_values, width_exponents

DEFAULT_WIDTH_STAT = "act_abs_mean"  # mean |activation|: the coordinate size muP keeps
MIN_HEIGHT = 550  # layout pixels; taller when the legend needs it
DASHES = ("solid", "dash", "dot", "dashdot")  # past the palette's colours, groups differ by dash
LEGEND_ROW, LEGEND_MARGIN = 22, 260  # pixels per legend entry; the title and axes besides
_BLOCK_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")  # a whole dotted name part made of digits


def layer_group(name: str) -> str:
    """The group of a layer: its name with block indices starred, so the layers of repeated
    blocks share a line ("layer1.0.conv1" and "layer1.1.conv1" are "layer1.*.conv1")."""
    return _BLOCK_INDEX.sub("*", name)


def width_check(runs, stat: str = DEFAULT_WIDTH_STAT, step=None, colours=None) -> go.Figure:
    """A statistic against width at one sweep step, one panel per width-sweep probe file and
    one line per layer group: the geometric mean over the group's layers (those with a
    positive value at every width). Log-log axes; each legend entry gives the power law's
    exponent p (value ~ width^p), near 0 for a width-stable group.

    `step`: the sweep step (default: the last; 0 is initialization). `colours`: {group:
    colour}. A run that is not a width-sweep probe file raises UsageError.
    """
    runs = as_run_list(runs)
    for run in runs:
        check_stat(run, stat)
        if not probe_layout(run).is_sweep:
            raise UsageError(
                f"{run_label(run)} is a probe of one model, not a width sweep "
                "(gradscope probe MODEL --widths W1,W2,...)"
            )
    fig = make_subplots(
        rows=1, cols=len(runs), subplot_titles=[run_label(r) for r in runs], shared_yaxes=True
    )
    panels = [_Panel(run, stat, step) for run in runs]
    groups = list(dict.fromkeys(g for panel in panels for g in panel.groups))
    palette = assign_colours(groups, taken=())
    palette.update(colours or {})
    dashes = {g: DASHES[(i // len(PALETTE)) % len(DASHES)] for i, g in enumerate(groups)}
    notes, drawn = [], []
    for col, panel in enumerate(panels, start=1):
        notes += panel.notes
        for group, values, exponent in zip(
            panel.groups, panel.values.T, panel.exponents, strict=True
        ):
            drawn.append(values)
            fig.add_trace(
                go.Scatter(
                    x=panel.widths,
                    y=values,
                    mode="lines+markers",
                    name=f"{group} (width^{exponent:+.2f})",
                    legendgroup=f"{col}",
                    legendgrouptitle={"text": panel.label} if len(runs) > 1 else None,
                    line={"color": palette[group], "dash": dashes[group]},
                    marker={"color": palette[group]},
                    hovertemplate=f"{group}<br>width %{{x}}<br>{stat} = %{{y:.4g}}"
                    f"<extra>{panel.label}</extra>",
                ),
                row=1,
                col=col,
            )
        ticks = {"tickvals": panel.widths, "ticktext": [str(w) for w in panel.widths]}
        fig.update_xaxes(type="log", title_text="width", row=1, col=col, **ticks)
    if not drawn:
        raise UsageError("; ".join(notes) or f"no layer has a positive {stat} at every width")
    add_notes_above_panels(fig, notes)
    fig.update_yaxes(log_axis_labelled(np.concatenate(drawn)), title_text=stat, row=1, col=1)
    for col in range(2, len(runs) + 1):
        fig.update_yaxes(log_axis_labelled(np.concatenate(drawn)), row=1, col=col)
    steps = sorted({panel.step for panel in panels})
    when = "at initialization" if steps == [0] else f"at step {', '.join(map(str, steps))}"
    entries = sum(len(panel.groups) for panel in panels) + (len(runs) if len(runs) > 1 else 0)
    fig.update_layout(
        height=max(MIN_HEIGHT, LEGEND_MARGIN + LEGEND_ROW * entries),  # the legend, uncut
        title={"text": f"{stat_words(stat)} across widths, {when} (coordinate check)"},
        hovermode="closest",
        legend={"groupclick": "toggleitem"},
        uirevision=f"widths:{stat}",
    )
    return fig


class _Panel:
    """One probe file's groups at one sweep step: values [widths, groups], exponents."""

    def __init__(self, run, stat: str, step):
        layout = probe_layout(run)
        self.label = run_label(run)
        self.step = layout.steps if step is None else int(step)
        self.widths = list(layout.widths)
        _, values = probe_values(run, stat, self.step)  # [widths, layers]
        names = run.layers["name"].astype(str).to_numpy()
        usable = np.isfinite(values).all(axis=0) & (values > 0).all(axis=0)
        members: dict[str, list[int]] = {}
        for j in np.flatnonzero(usable):
            members.setdefault(layer_group(names[j]), []).append(j)
        self.groups = list(members)
        means = [np.exp(np.log(values[:, js]).mean(axis=1)) for js in members.values()]
        self.values = np.column_stack(means) if means else np.empty((len(self.widths), 0))
        self.exponents = width_exponents(self.widths, self.values)
        left_out = int((~usable).sum())
        self.notes = (
            [f"{self.label}: {left_out} layers without a positive {stat} at every width left out"]
            if left_out
            else []
        )
