"""What each figure panel draws: one helper shared by the page and the PNG download."""

from __future__ import annotations

import json
import textwrap

import plotly.graph_objects as go
from gradscope.app.controls import Controls, flow_position

from gradscope import figures
from gradscope.errors import UsageError

MAX_HEATMAP_STEPS = 600  # columns per heatmap; longer runs are downsampled by the figure

# The controls each panel depends on (besides the runs and their new records); the page
# redraws a panel only when one of these changes.
PANEL_CONTROLS = {
    "flow": (
        "stat",
        "layer_types",
        "layer_pattern",
        "step_index",
        "window",
        "scale",
        "depth_axis",
        "lines",
    ),
    "heatmap": ("stat", "layer_types", "layer_pattern", "scale"),
    "ratio": ("stat", "layer_types", "layer_pattern", "ratio_numerator"),
    "training": ("smoothing",),
}


def _flow(runs, c: Controls, colours) -> go.Figure:
    return figures.flow_curve(
        runs,
        _require_stat(c),
        **flow_position(runs, c.step_index, c.window),
        depth_axis=c.depth_axis,
        log_y=c.log_scale,
        lines=c.lines,
        colours=colours,
        **c.filters(),
    )


def _heatmap(runs, c: Controls, colours) -> go.Figure:
    return figures.depth_step_heatmap(
        runs,
        _require_stat(c),
        max_steps=MAX_HEATMAP_STEPS,
        log_color=c.log_scale,
        colours=colours,
        **c.filters(),
    )


def _ratio(runs, c: Controls, colours) -> go.Figure:
    if len(runs) < 2:
        raise UsageError("select two runs to see their ratio heatmap")
    top, bottom = runs[:2] if c.ratio_numerator == 0 else runs[1::-1]
    return figures.ratio_heatmap(
        top, bottom, _require_stat(c), max_steps=MAX_HEATMAP_STEPS, **c.filters()
    )


def _training(runs, c: Controls, colours) -> go.Figure:
    return figures.training_curves(runs, smoothing=c.smoothing, colours=colours)


PANEL_BUILDERS = {"flow": _flow, "heatmap": _heatmap, "ratio": _ratio, "training": _training}


def _require_stat(c: Controls) -> str:
    if c.stat is None:
        raise UsageError("choose a statistic")
    return c.stat


def panel_figure(kind: str, runs, controls: Controls, colours=None) -> go.Figure:
    """The figure of panel `kind` for open `runs`, with a `uirevision` that keeps the zoom.

    `colours` is {run label: colour} over the whole runs folder (`RunIndex.colours`). The
    same call feeds the page and the PNG download, so both show the same image.
    Raises UsageError for a selection the figure cannot show.
    """
    if kind not in PANEL_BUILDERS:
        raise UsageError(f"unknown panel {kind!r}")
    if not runs:
        raise UsageError("select a run to compare")
    fig = PANEL_BUILDERS[kind](runs, controls, colours)
    fig.update_layout(uirevision=view_key(kind, controls))
    return fig


# Controls that move along the same axes rather than change them: the zoom survives these.
SAME_VIEW_CONTROLS = ("step_index", "window", "smoothing", "ratio_numerator")


def view_key(kind: str, controls: Controls) -> str:
    """What a panel shows, apart from new records: the zoom is kept while this stays the same."""
    view = {"kind": kind, "runs": controls.runs}
    for name in PANEL_CONTROLS[kind]:
        if name not in SAME_VIEW_CONTROLS:
            view[name] = getattr(controls, "log_scale" if name == "scale" else name)
    return json.dumps(view, sort_keys=True)


def remembered_zoom(zoom: dict | None, view: str, relayout: dict | None) -> dict:
    """The axis ranges a user zoomed to in `view`, updated with a plotly `relayoutData` event.

    Returns {"view": view, "ranges": {axis name: [low, high]}}; double-click (autorange)
    forgets an axis, and a zoom remembered for another view is dropped.
    """
    ranges = dict(zoom["ranges"]) if zoom and zoom.get("view") == view else {}
    for key, value in (relayout or {}).items():
        axis, _, attr = str(key).partition(".")
        if not axis.startswith(("xaxis", "yaxis")):
            continue
        if attr == "autorange":
            ranges.pop(axis, None)
        elif attr == "range" and isinstance(value, list) and len(value) == 2:
            ranges[axis] = list(value)
        elif attr in ("range[0]", "range[1]"):
            low_high = ranges.get(axis, [None, None])
            low_high[int(attr[6])] = value
            ranges[axis] = low_high
    return {"view": view, "ranges": ranges}


def apply_zoom(fig: go.Figure, view: str, zoom: dict | None) -> go.Figure:
    """Set the axis ranges the user zoomed to, when they were zoomed in this same view.

    plotly's `uirevision` alone does not keep them: dcc.Graph re-plots right after a zoom
    with a layout plotly already changed, which erases plotly's record of the user's edit.
    """
    for axis, settings in _zoomed_axes(view, zoom).items():
        fig.update_layout({axis: settings})
    return fig


def zoomed_data(fig: dict, view: str, zoom: dict | None) -> dict:
    """`apply_zoom` for a figure as plotly's JSON data (a dict), shared by other requests: a
    copy with the user's ranges when they apply, else `fig` itself."""
    axes = _zoomed_axes(view, zoom)
    if not axes:
        return fig
    layout = dict(fig.get("layout", {}))
    for axis, settings in axes.items():
        layout[axis] = {**layout.get(axis, {}), **settings}
    return {**fig, "layout": layout}


def _zoomed_axes(view: str, zoom: dict | None) -> dict:
    """{axis name: its layout settings} for the ranges the user zoomed to in `view`."""
    if not zoom or zoom.get("view") != view:
        return {}
    return {
        axis: {"range": [low, high], "autorange": False}
        for axis, (low, high) in zoom.get("ranges", {}).items()
        if low is not None and high is not None
    }


def figure_notes(fig: go.Figure) -> list[str]:
    """Sentences a figure wrote about runs it could not draw (`layout.meta["notes"]`)."""
    meta = fig.layout.meta
    return list(meta.get("notes", [])) if isinstance(meta, dict) else []


MESSAGE_LINE_CHARS = 90  # a message figure wraps its text so no line is cut at the edge


def message_figure(text: str) -> go.Figure:
    """An empty figure that says why there is nothing to draw, wrapped to fit its width."""
    fig = go.Figure()
    fig.add_annotation(
        text="<br>".join(textwrap.wrap(text, MESSAGE_LINE_CHARS)) or text,
        showarrow=False,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        font={"size": 14, "color": "#a61b1b"},
    )
    fig.update_layout(
        xaxis={"visible": False}, yaxis={"visible": False}, template="plotly_white", height=320
    )
    return fig
