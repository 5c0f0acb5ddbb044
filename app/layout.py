"""The dashboard page: a sidebar (run table, run picker, controls) beside the figure panels."""

from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import dcc, html
from gradscope.app import ids
from gradscope.app.controls import DEFAULT_SELECTED_RUNS, MAX_SELECTED_RUNS
from gradscope.app.run_index import RunEntry, RunIndex

from gradscope import figures

LIVE_POLL_MS = 2000  # how often the page asks the server for new records
RUN_TABLE_MAX_HEIGHT = "38vh"  # the run table scrolls past this instead of pushing the controls

HOW_TO_RECORD = """\
import gradscope
recorder = gradscope.attach(model, "{runs}/my_run.h5")  # before training
# ... train as usual: one record per optimizer step on the recorder's schedule ...
recorder.close()"""


def newest_runs(entries: list[RunEntry], count: int = DEFAULT_SELECTED_RUNS) -> list[str]:
    """The relative paths of the `count` most recently modified readable runs, newest first."""
    readable = [e for e in entries if e.error is None and not e.probe]  # probes: probe_view
    readable.sort(key=lambda e: e.mtime, reverse=True)
    return [e.rel for e in readable[:count]]


def swatch(colour: str | None) -> html.Span:
    """A small square of a run's colour (blank for a run that has none)."""
    return html.Span(
        className="d-inline-block rounded-1 me-2 align-middle run-swatch",
        style={
            "width": "0.8em",
            "height": "0.8em",
            "backgroundColor": colour or "transparent",
            "border": "1px solid rgba(0,0,0,.25)",
        },
    )


def run_options(entries: list[RunEntry], colours: dict) -> list[dict]:
    """Options of the runs dropdown, each with its run's swatch; unreadable files cannot be
    chosen. Search matches the label, model and file path."""
    options = []
    for e in (e for e in entries if not e.probe):  # probe files have their own picker
        text = e.label if e.error is None else f"{e.rel} (unreadable)"
        options.append(
            {
                "label": html.Span([swatch(colours.get(e.label)), text]),
                "value": e.rel,
                "disabled": e.error is not None,
                "search": f"{text} {e.model or ''} {e.rel}",
            }
        )
    return options


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


def matches(entry: RunEntry, search: str | None) -> bool:
    """True when every word of `search` is in the run's model, folder, file name or label."""
    words = (search or "").lower().split()
    text = " ".join(
        str(part) for part in (entry.model, entry.folder, entry.name, entry.label) if part
    ).lower()
    return all(word in text for word in words)


def run_table(
    entries: list[RunEntry], root_label: str, colours: dict, selected=None, search=None
) -> list:
    """The runs as a table (swatch, model, folder, records, live or complete), filtered by
    `search`; the selected runs are highlighted, an unreadable file shows its error. Probe
    files are listed apart (probe_view.probe_table)."""
    entries = [e for e in entries if not e.probe]
    if not entries:
        return [
            html.P(f"No run files (*.h5) under {root_label} yet. Record one from Python:"),
            html.Pre(HOW_TO_RECORD.format(runs=root_label), className="how-to small"),
            html.P("or from the shell with `gradscope record --help`; this page picks it up."),
        ]
    shown = [e for e in entries if matches(e, search)]
    chosen = set(selected or ())
    header = html.Thead(
        html.Tr([html.Th(""), html.Th("model"), html.Th("folder"), html.Th("records"), html.Th("")])
    )
    rows = [_run_row(e, root_label, colours, e.rel in chosen) for e in shown]
    table = dbc.Table(
        [header, html.Tbody(rows)],
        size="sm",
        hover=True,
        className="small mb-1 align-middle",
    )
    count = f"{len(shown)} of {len(entries)} runs" if search else f"{len(entries)} runs"
    return [
        html.Div(table, className="overflow-auto", style={"maxHeight": RUN_TABLE_MAX_HEIGHT}),
        html.Div(f"{count} under {root_label}", className="text-muted small"),
    ]


def _run_row(entry: RunEntry, root_label: str, colours: dict, chosen: bool) -> html.Tr:
    folder = entry.folder if entry.folder != "." else root_label
    if entry.error is not None:
        return html.Tr(
            [
                html.Td(swatch(None)),
                html.Td([html.Div(entry.name), html.Div(entry.error, className="text-danger")]),
                html.Td(folder),
                html.Td("-"),
                html.Td(dbc.Badge("error", color="danger")),
            ],
            className="run-entry run-error",
            title=entry.rel,
        )
    records = f"{entry.records:,}"
    if entry.dropped:
        records += f" ({entry.dropped:,} dropped)"
    return html.Tr(
        [
            html.Td(swatch(colours.get(entry.label))),
            html.Td(entry.model),
            html.Td(folder),
            html.Td(records, className="text-end"),
            html.Td(_run_state(entry), className="text-muted"),
        ],
        className="run-entry table-active fw-semibold" if chosen else "run-entry",
        title=entry.rel,
    )


BANNER_PER_RUN = 3  # origins said over the panels per run; `gradscope inspect` lists all


def nonfinite_banner(origins: list[tuple[str, str | None, list[str]]]) -> list:
    """The sentences saying where each run's first non-finite values appeared, over the panels:
    (run label, its colour, its sentences) each; nothing when no run has one."""
    lines = []
    for label, colour, sentences in origins:
        for sentence in sentences[:BANNER_PER_RUN]:
            lines.append(
                html.Div([swatch(colour), html.Strong(f"{label}: "), sentence], className="small")
            )
        if len(sentences) > BANNER_PER_RUN:
            more = len(sentences) - BANNER_PER_RUN
            lines.append(html.Div(f"{label}: and {more} more (gradscope inspect lists them)"))
    if not lines:
        return []
    return [dbc.Alert(lines, color="danger", className="mt-3 mb-2 py-2 nonfinite-origin")]


def _run_state(entry: RunEntry):
    """The state cell of a readable run: live, complete, or how writing it failed."""
    if entry.write_error:
        return dbc.Badge(
            "write error",
            color="danger",
            title=f"writing stopped: {entry.write_error}; the records before are all here",
        )
    return dbc.Badge("live", color="success") if entry.is_live else "complete"


def diagnosis_heading(label: str, colour: str | None) -> html.H6:
    """The heading of one run's diagnosis: its swatch and name."""
    return html.H6([swatch(colour), label], className="mt-3")


# Dash 4's slider shows its value (here a record index) in a box of its own: the step box
# beside it shows the step instead. Dash 2's slider has no such box (nor the argument).
_NO_INDEX_BOX = (
    {"allow_direct_input": False}
    if "allow_direct_input" in dcc.Slider().available_properties
    else {}
)


def _labelled(label: str, control) -> html.Div:
    """A control under its caption (a Div, not a Label: a label forwards clicks to its input)."""
    return html.Div([html.Div(label, className="form-label small mb-1"), control], className="mb-3")


def _radio(component_id: str, options, value) -> dbc.RadioItems:
    return dbc.RadioItems(
        id=component_id, options=options, value=value, inline=True, className="small"
    )


def controls(entries: list[RunEntry], selected: list[str], colours: dict) -> html.Div:
    """The controls; their options are filled in by callbacks from the selected runs."""
    return html.Div(
        [
            _labelled(
                "Runs to compare (the ratio uses the first two)",
                dcc.Dropdown(
                    id=ids.RUNS,
                    options=run_options(entries, colours),
                    value=selected,
                    multi=True,
                    placeholder=f"choose up to {MAX_SELECTED_RUNS} runs",
                ),
            ),
            _labelled("Statistic", dcc.Dropdown(id=ids.STAT, clearable=False)),
            _labelled("Layer types (empty: all)", dcc.Dropdown(id=ids.LAYER_TYPES, multi=True)),
            _labelled(
                "Layer name pattern",
                dbc.Input(
                    id=ids.LAYER_PATTERN,
                    type="text",
                    placeholder="e.g. layer3.*",
                    debounce=True,
                    size="sm",
                ),
            ),
            _labelled(
                "Step (flow curve)",
                html.Div(
                    [
                        html.Div(
                            [
                                html.Div(
                                    dcc.Slider(
                                        id=ids.STEP,
                                        min=0,
                                        max=0,
                                        step=1,
                                        value=0,
                                        marks=None,
                                        **_NO_INDEX_BOX,
                                    ),
                                    className="flex-grow-1",
                                ),
                                dbc.Input(
                                    id=ids.STEP_INPUT,
                                    type="number",
                                    debounce=True,  # Enter or leaving the box applies it
                                    size="sm",
                                    placeholder="step",
                                    style={"width": "6.5em"},
                                ),
                            ],
                            className="d-flex align-items-center gap-2",
                        ),
                        html.Div(id=ids.STEP_LABEL, className="small text-muted"),
                    ]
                ),
            ),
            _labelled(
                "Average over records (flow curve)",
                dbc.Input(
                    id=ids.WINDOW,
                    type="number",
                    min=1,
                    step=1,
                    placeholder="1",
                    debounce=True,
                    size="sm",
                ),
            ),
            _labelled(
                "Flow lines",
                _radio(
                    ids.LINES,
                    [
                        {"label": "one per layer type", "value": "by_type"},
                        {"label": "all layers", "value": "all"},
                    ],
                    "by_type",
                ),
            ),
            _labelled(
                "Depth axis",
                _radio(
                    ids.DEPTH_AXIS,
                    [
                        {"label": "aligned by name", "value": "aligned"},
                        {"label": "layer index", "value": "index"},
                        {"label": "normalized", "value": "normalized"},
                    ],
                    "aligned",
                ),
            ),
            _labelled("Values", _radio(ids.SCALE, ["log", "linear"], "log")),
            _labelled(
                "Smoothing (training curves)",
                dcc.Slider(
                    id=ids.SMOOTHING,
                    min=0,
                    max=0.99,
                    step=0.01,
                    value=figures.DEFAULT_SMOOTHING,
                    marks={0: "off", 0.6: "0.6", 0.99: "0.99"},
                    tooltip={"placement": "bottom"},
                ),
            ),
        ]
    )


def figure_panel(panel: str, title: str, choice=None) -> dbc.Card:
    """One figure with its title, a control of its own after it (`choice`), PNG download
    button and message line."""
    return dbc.Card(
        [
            dbc.CardHeader(
                [
                    html.H5(title, className="d-inline-block me-3 mb-0 align-middle"),
                    *([choice] if choice is not None else []),
                    dbc.Button(
                        "PNG",
                        id=ids.panel_id("png-button", panel),
                        n_clicks=0,
                        size="sm",
                        color="secondary",
                        outline=True,
                    ),
                    dcc.Download(id=ids.panel_id("png-download", panel)),
                    html.Span(
                        id=ids.panel_id("png-message", panel), className="text-danger small ms-2"
                    ),
                ]
            ),
            dbc.CardBody(
                [
                    html.Div(
                        id=ids.panel_id("message", panel),
                        className="panel-message text-danger small",
                        style={"whiteSpace": "pre-wrap"},
                    ),
                    dcc.Graph(
                        id=ids.panel_id("graph", panel),
                        config={"displaylogo": False},
                        # Responsive graphs ignore `uirevision` (plotly/dash#2595); plotly still
                        # fills the panel's width when it draws, at the figure's own height.
                        responsive=False,
                    ),
                    dcc.Store(id=ids.panel_id("zoom", panel)),  # see panels.apply_zoom
                ],
                className="p-2",
            ),
        ],
        className="panel mb-3",
    )


def panel_choice(panel: str):
    """The control that belongs to one panel, shown in its header, or None: which run is the
    ratio's numerator (its options, named after the runs, follow the selection)."""
    if panel != "ratio":
        return None
    return dbc.RadioItems(
        id=ids.RATIO_NUMERATOR,
        options=[],
        value=0,
        inline=True,
        className="d-inline-block small me-3 align-middle",
    )


def page(index: RunIndex, root_label: str) -> dbc.Container:
    """The whole page, scanned fresh on each load so new runs and the newest selection show."""
    from gradscope.app.probe_view import probe_section, probe_sidebar  # it imports this module

    entries = index.scan()
    colours = index.colours()
    selected = newest_runs(entries)
    sidebar = html.Div(
        [
            html.H2("gradscope", className="h4 mt-3 mb-0"),
            html.Div("gradient flow through depth and steps", className="text-muted small mb-3"),
            dbc.Input(
                id=ids.RUN_SEARCH,
                type="search",
                placeholder="search runs: model, folder",
                size="sm",
                className="mb-2",
                debounce=False,
            ),
            html.Div(run_table(entries, root_label, colours, selected), id=ids.RUN_LIST),
            probe_sidebar(entries, root_label, colours),
            html.Hr(),
            controls(entries, selected, colours),
        ],
        className="sidebar",
    )
    main = html.Div(
        [
            html.Div(
                id=ids.PAGE_MESSAGE,
                className="text-danger small mt-3",
                style={"whiteSpace": "pre-wrap"},
            ),
            html.Div(id=ids.NONFINITE),
            *[figure_panel(p, t, panel_choice(p)) for p, t in ids.PANELS.items()],
            dbc.Card(
                [
                    dbc.CardHeader(html.H5("Diagnosis", className="mb-0")),
                    dbc.CardBody(html.Div(id=ids.DIAGNOSIS)),
                ],
                className="mb-3",
            ),
            probe_section(entries, root_label, colours),
        ],
        className="pt-1",
    )
    return dbc.Container(
        [
            dbc.Row(
                [
                    dbc.Col(
                        sidebar,
                        xs=12,
                        lg=4,
                        xxl=3,
                        className="bg-light border-end vh-100 overflow-auto sticky-top",
                    ),
                    dbc.Col(main, xs=12, lg=8, xxl=9),
                ],
                className="g-3",
            ),
            dcc.Interval(id=ids.TIMER, interval=LIVE_POLL_MS),
            dcc.Store(id=ids.VERSIONS, data=run_versions(entries, selected)),
        ],
        fluid=True,
    )
