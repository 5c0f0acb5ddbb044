"""The dashboard page: run list, controls, figure panels and diagnosis, built per page load."""

from __future__ import annotations

from dash import dcc, html
from gradscope.app import ids
from gradscope.app.controls import DEFAULT_SELECTED_RUNS, MAX_SELECTED_RUNS
from gradscope.app.run_index import RunEntry, RunIndex

LIVE_POLL_MS = 2000  # how often the page asks the server for new records

STYLE_PAGE = {"fontFamily": "system-ui, sans-serif", "margin": "0 auto", "maxWidth": "1400px"}
STYLE_CONTROLS = {
    "display": "grid",
    "gridTemplateColumns": "repeat(auto-fit, minmax(240px, 1fr))",
    "gap": "12px 24px",
    "alignItems": "end",
}
STYLE_PANELS = {
    "display": "grid",
    "gridTemplateColumns": "repeat(auto-fit, minmax(560px, 1fr))",
    "overflowX": "hidden",
    "gap": "16px",
}
STYLE_MESSAGE = {"color": "#a61b1b", "whiteSpace": "pre-wrap"}
STYLE_ERROR_ROW = {"color": "#a61b1b"}

HOW_TO_RECORD = """\
import gradscope
recorder = gradscope.attach(model, "{runs}/my_run.h5")  # before training
# ... train as usual: one record per optimizer step on the recorder's schedule ...
recorder.close()"""


def newest_runs(entries: list[RunEntry], count: int = DEFAULT_SELECTED_RUNS) -> list[str]:
    """The relative paths of the `count` most recently modified readable runs, newest first."""
    readable = [e for e in entries if e.error is None]
    readable.sort(key=lambda e: e.mtime, reverse=True)
    return [e.rel for e in readable[:count]]


def run_options(entries: list[RunEntry]) -> list[dict]:
    """Options of the runs dropdown, grouped by folder; unreadable files cannot be chosen."""
    return [
        {
            "label": f"{e.rel}  ({e.model})" if e.error is None else e.rel,
            "value": e.rel,
            "disabled": e.error is not None,
        }
        for e in entries
    ]


def run_versions(entries: list[RunEntry], selected) -> dict:
    """Records, live state and inode of each selected readable run: a change means a redraw.

    Not the modification time: a live writer touches its file with a heartbeat at every flush.
    """
    wanted = set(selected or ())
    return {
        e.rel: [e.records, e.is_live, e.inode]
        for e in entries
        if e.rel in wanted and e.error is None
    }


def run_list(entries: list[RunEntry], root_label: str) -> list:
    """The run files grouped by folder, each with model, records and live state or its error."""
    if not entries:
        return [
            html.P(f"No run files (*.h5) under {root_label} yet. Record one from Python:"),
            html.Pre(HOW_TO_RECORD.format(runs=root_label), className="how-to"),
            html.P("or from the shell with `gradscope record --help`; this page picks it up."),
        ]
    children = []
    folder = None
    for entry in entries:
        if entry.folder != folder:
            folder = entry.folder
            children.append(
                html.H4(folder if folder != "." else root_label, className="run-folder")
            )
        children.append(_run_row(entry))
    return children


def _run_row(entry: RunEntry) -> html.Div:
    if entry.error is not None:
        return html.Div(
            f"{entry.name}: error: {entry.error}",
            className="run-entry run-error",
            style=STYLE_ERROR_ROW,
        )
    state = "live" if entry.is_live else "complete"
    return html.Div(
        f"{entry.name}: {entry.model}, {entry.records} records, {state}", className="run-entry"
    )


def _labelled(label: str, control) -> html.Div:
    """A control under its caption (a Div, not a Label: a label forwards clicks to its input)."""
    return html.Div([html.Div(label, style={"fontSize": "0.85em"}), control])


def controls(entries: list[RunEntry], selected: list[str]) -> html.Div:
    """The controls; their options are filled in by callbacks from the selected runs."""
    return html.Div(
        [
            html.Div(
                _labelled(
                    "Runs to compare",
                    dcc.Dropdown(
                        id=ids.RUNS,
                        options=run_options(entries),
                        value=selected,
                        multi=True,
                        placeholder=f"choose up to {MAX_SELECTED_RUNS} runs",
                    ),
                ),
                style={"gridColumn": "span 2"},
            ),
            _labelled("Statistic", dcc.Dropdown(id=ids.STAT, clearable=False)),
            _labelled("Layer types (empty: all)", dcc.Dropdown(id=ids.LAYER_TYPES, multi=True)),
            _labelled(
                "Layer name pattern",
                dcc.Input(
                    id=ids.LAYER_PATTERN,
                    type="text",
                    placeholder="e.g. layer3.*",
                    debounce=True,
                ),
            ),
            _labelled(
                "Step",
                html.Div(
                    [
                        dcc.Slider(id=ids.STEP, min=0, max=0, step=1, value=0, marks=None),
                        html.Div(id=ids.STEP_LABEL, style={"fontSize": "0.85em"}),
                    ]
                ),
            ),
            _labelled(
                "Average over records",
                dcc.Input(
                    id=ids.WINDOW,
                    type="number",
                    min=1,
                    step=1,
                    placeholder="1",
                    debounce=True,
                ),
            ),
            _labelled(
                "Values",
                dcc.RadioItems(
                    id=ids.SCALE,
                    options=["log", "linear"],
                    value="log",
                    inline=True,
                ),
            ),
            _labelled(
                "Depth axis",
                dcc.RadioItems(
                    id=ids.DEPTH_AXIS,
                    options=[
                        {"label": "layer index", "value": "index"},
                        {"label": "normalized depth", "value": "normalized"},
                    ],
                    value="index",
                    inline=True,
                ),
            ),
        ],
        style=STYLE_CONTROLS,
    )


def figure_panel(panel: str, title: str) -> html.Div:
    """One figure with its title, PNG download button and error line."""
    return html.Div(
        [
            html.Div(
                [
                    html.H3(title, style={"display": "inline-block", "margin": "0 12px 0 0"}),
                    html.Button("PNG", id=ids.panel_id("png-button", panel), n_clicks=0),
                    dcc.Download(id=ids.panel_id("png-download", panel)),
                    html.Span(id=ids.panel_id("png-message", panel), style=STYLE_MESSAGE),
                ]
            ),
            html.Div(
                id=ids.panel_id("message", panel), className="panel-message", style=STYLE_MESSAGE
            ),
            dcc.Graph(
                id=ids.panel_id("graph", panel),
                config={"displaylogo": False},
                # Responsive graphs ignore `uirevision` (plotly/dash#2595); plotly still
                # fills the panel's width when it draws, at the figure's own height.
                responsive=False,
            ),
            dcc.Store(id=ids.panel_id("zoom", panel)),  # the user's zoom, see panels.apply_zoom
        ],
        className="panel",
    )


def page(index: RunIndex, root_label: str) -> html.Div:
    """The whole page, scanned fresh on each load so new runs and the newest selection show."""
    entries = index.scan()
    selected = newest_runs(entries)
    return html.Div(
        [
            html.H2("gradscope: gradient flow"),
            html.Section(
                [html.H3("Runs"), html.Div(run_list(entries, root_label), id=ids.RUN_LIST)]
            ),
            html.Section(
                [controls(entries, selected), html.Div(id=ids.PAGE_MESSAGE, style=STYLE_MESSAGE)]
            ),
            html.Section([figure_panel(p, t) for p, t in ids.PANELS.items()], style=STYLE_PANELS),
            html.Section([html.H3("Diagnosis"), html.Div(id=ids.DIAGNOSIS)]),
            dcc.Interval(id=ids.TIMER, interval=LIVE_POLL_MS),
            dcc.Store(id=ids.VERSIONS, data=run_versions(entries, selected)),
        ],
        style=STYLE_PAGE,
    )
