"""The probe view: probe files (gradscope probe), their own list, picker, panels and diagnosis.

Probe files have no training steps to speak of, so they are kept out of the training runs'
table and picker and shown here: the signal propagation plot and, for width sweeps, the
coordinate check, with the diagnosis at initialization.
"""

from __future__ import annotations

from dataclasses import dataclass

import dash_bootstrap_components as dbc
from dash import MATCH, Input, Output, State, ctx, dcc, html, no_update
from gradscope.app import ids
from gradscope.app.callbacks import describe_error, diagnosis_output, with_readable_runs
from gradscope.app.controls import MAX_SELECTED_RUNS, _choice, _optional_int, _run_list
from gradscope.app.layout import swatch
from gradscope.app.panels import apply_zoom, figure_notes, message_figure, remembered_zoom
from gradscope.app.run_index import RunEntry, RunIndex

from gradscope import figures
from gradscope.errors import UsageError
from gradscope.store import probe_layout

BROCK = "brock"  # the SPP statistic choice that draws Brock et al.'s panels
HOW_TO_PROBE = "gradscope probe resnet56 plain56 --out {runs}/probes"


def probe_entries(entries: list[RunEntry]) -> list[RunEntry]:
    """The readable probe files among `entries`."""
    return [e for e in entries if e.probe and e.error is None]


def default_probes(entries: list[RunEntry]) -> list[str]:
    """The probes shown on load: those in the folder of the newest probe file (a `gradscope
    probe A B` writes its models side by side), at most MAX_SELECTED_RUNS."""
    probes = probe_entries(entries)
    if not probes:
        return []
    newest = max(probes, key=lambda e: e.mtime)
    return [e.rel for e in probes if e.folder == newest.folder][:MAX_SELECTED_RUNS]


def describe_probe(entry: RunEntry) -> str:
    """What a probe file holds, in a few words: its widths, or "init"."""
    if entry.widths:
        return "widths " + ", ".join(str(w) for w in entry.widths)
    return "at init" if entry.records == 1 else f"{entry.records - 1} steps"


def probe_table(entries: list[RunEntry], root_label: str, colours: dict) -> list:
    """The probe files under the runs folder (swatch, model, folder, what), apart from runs."""
    probes = probe_entries(entries)
    if not probes:
        return [html.Div(f"No probe files yet: {HOW_TO_PROBE.format(runs=root_label)}")]
    rows = [
        html.Tr(
            [
                html.Td(swatch(colours.get(e.label))),
                html.Td(e.model),
                html.Td(e.folder if e.folder != "." else root_label),
                html.Td(describe_probe(e), className="text-muted"),
            ],
            className="probe-entry",
            title=e.rel,
        )
        for e in probes
    ]
    header = html.Thead(html.Tr([html.Th(""), html.Th("model"), html.Th("folder"), html.Th("")]))
    return [
        dbc.Table([header, html.Tbody(rows)], size="sm", className="small mb-1 align-middle"),
        html.Div(f"{len(probes)} probe files", className="text-muted small"),
    ]


def probe_options(entries: list[RunEntry], colours: dict) -> list[dict]:
    """Options of the probe picker, each with its swatch."""
    return [
        {
            "label": html.Span([swatch(colours.get(e.label)), f"{e.label} ({describe_probe(e)})"]),
            "value": e.rel,
            "search": f"{e.label} {e.model or ''} {e.rel}",
        }
        for e in probe_entries(entries)
    ]


@dataclass(frozen=True)
class ProbeControls:
    """The probe view's choices, checked: every value came from an untrusted request."""

    probes: tuple[str, ...] = ()
    spp_stat: str = BROCK
    spp_layers: str = "blocks"
    width_stat: str = figures.DEFAULT_WIDTH_STAT
    width_step: int | None = None  # None: the last sweep step

    @classmethod
    def from_request(
        cls, probes=None, spp_stat=None, spp_layers="blocks", width_stat=None, width_step=None
    ) -> ProbeControls:
        """Check raw callback values; raise UsageError on anything odd."""
        for value, what in ((spp_stat, "statistic"), (width_stat, "statistic")):
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{what} must be text")
        return cls(
            probes=_run_list(probes),
            spp_stat=spp_stat or BROCK,
            spp_layers=_choice(spp_layers, figures.SPP_LAYERS, "layers"),
            width_stat=width_stat or figures.DEFAULT_WIDTH_STAT,
            width_step=_optional_int(width_step, "sweep step", minimum=0),
        )


def _spp(runs, c: ProbeControls, colours):
    stats = None if c.spp_stat == BROCK else c.spp_stat
    return figures.signal_propagation(runs, stats, layers=c.spp_layers, colours=colours)


def _widths(runs, c: ProbeControls, colours):
    sweeps = [run for run in runs if probe_layout(run).is_sweep]
    if not sweeps:
        raise UsageError(
            "none of the probes shown is a width sweep: run gradscope probe MODEL --widths "
            "W1,W2,... --steps K"
        )
    step = c.width_step
    if step is not None:
        step = min(step, min(probe_layout(run).steps for run in sweeps))
    return figures.width_check(sweeps, c.width_stat, step=step)


PROBE_BUILDERS = {"spp": _spp, "widths": _widths}


def probe_view_key(kind: str, c: ProbeControls) -> str:
    """What a probe panel shows: the zoom is kept while this stays the same."""
    if kind == "spp":
        return f"spp:{c.probes}:{c.spp_stat}:{c.spp_layers}"
    return f"widths:{c.probes}:{c.width_stat}"


def probe_figure(index: RunIndex, kind: str, values: dict, zoom: dict | None = None) -> tuple:
    """(figure, message) of probe panel `kind` for the control `values`."""
    try:
        controls = ProbeControls.from_request(**values)
        if not controls.probes:
            raise UsageError("select a probe file")
        colours = index.colours()
        fig, problems = with_readable_runs(
            index, controls.probes, lambda runs: PROBE_BUILDERS[kind](runs, controls, colours)
        )
        view = probe_view_key(kind, controls)
        fig.update_layout(uirevision=view)
        return apply_zoom(fig, view, zoom), "\n".join([*figure_notes(fig), *problems])
    except Exception as e:  # noqa: BLE001 - shown on the page
        message = describe_error(index, e)
        return message_figure(message), message


def probe_png(index: RunIndex, kind: str, values: dict) -> tuple:
    """(dcc.Download data, message): the panel as `gradscope export --figure spp|widths`."""
    from gradscope.export import default_size, figure_png_bytes, style_for_print

    try:
        controls = ProbeControls.from_request(**values)
        colours = index.colours()
        fig, _ = with_readable_runs(
            index, controls.probes, lambda runs: PROBE_BUILDERS[kind](runs, controls, colours)
        )
        fig = style_for_print(fig)
        width, height = default_size(fig, kind)
        png = figure_png_bytes(fig, width=width, height=height)
    except Exception as e:  # noqa: BLE001 - shown on the page
        return no_update, describe_error(index, e)
    return dcc.send_bytes(png, f"{kind}.png"), ""


def probe_control_values(index: RunIndex, selected, spp_stat, width_stat, width_step) -> dict:
    """Options and values of the probe controls for the selected probes: keys spp_options,
    spp_stat, width_options, width_stat, step_options, width_step."""
    out = {
        "spp_options": [{"label": "Brock et al.'s panels", "value": BROCK}],
        "spp_stat": spp_stat or BROCK,
        "width_options": [],
        "width_stat": width_stat,
        "step_options": [],
        "width_step": width_step,
    }
    try:
        controls = ProbeControls.from_request(probes=selected)

        def options(runs):
            stats = list(dict.fromkeys(s for run in runs for s in run.stats))
            sweeps = [run for run in runs if probe_layout(run).is_sweep]
            steps = min((probe_layout(run).steps for run in sweeps), default=None)
            sweep_stats = list(dict.fromkeys(s for run in sweeps for s in run.stats))
            return stats, sweep_stats, steps

        (stats, sweep_stats, steps), _ = with_readable_runs(index, controls.probes, options)
    except Exception:  # noqa: BLE001 - the panels say what is wrong
        return out
    out["spp_options"] += [{"label": figures.stat_words(s), "value": s} for s in stats]
    if out["spp_stat"] not in (BROCK, *stats):
        out["spp_stat"] = BROCK
    out["width_options"] = [{"label": figures.stat_words(s), "value": s} for s in sweep_stats]
    if width_stat not in sweep_stats:
        out["width_stat"] = (
            figures.DEFAULT_WIDTH_STAT
            if figures.DEFAULT_WIDTH_STAT in sweep_stats
            else (sweep_stats[0] if sweep_stats else None)
        )
    if steps is not None:
        out["step_options"] = [
            {"label": "at init" if t == 0 else f"step {t}", "value": t} for t in range(steps + 1)
        ]
        out["width_step"] = steps if width_step is None or width_step > steps else width_step
    return out


def probe_panel(kind: str, title: str, controls) -> dbc.Card:
    """One probe figure with its own controls, PNG button and message line."""
    return dbc.Card(
        [
            dbc.CardHeader(
                [
                    html.H5(title, className="d-inline-block me-3 mb-0 align-middle"),
                    dbc.Button(
                        "PNG",
                        id=ids.probe_panel_id("png-button", kind),
                        n_clicks=0,
                        size="sm",
                        color="secondary",
                        outline=True,
                    ),
                    dcc.Download(id=ids.probe_panel_id("png-download", kind)),
                    html.Span(
                        id=ids.probe_panel_id("png-message", kind),
                        className="text-danger small ms-2",
                    ),
                    html.Div(controls, className="d-flex gap-3 mt-2 small align-items-center"),
                ]
            ),
            dbc.CardBody(
                [
                    html.Div(
                        id=ids.probe_panel_id("message", kind),
                        className="panel-message text-danger small",
                        style={"whiteSpace": "pre-wrap"},
                    ),
                    dcc.Graph(
                        id=ids.probe_panel_id("graph", kind),
                        config={"displaylogo": False},
                        responsive=False,
                    ),
                    dcc.Store(id=ids.probe_panel_id("zoom", kind)),
                ],
                className="p-2",
            ),
        ],
        className="panel mb-3",
    )


def _dropdown(component_id: str, value, width: str = "16rem", **extra) -> html.Div:
    return html.Div(
        dcc.Dropdown(id=component_id, value=value, clearable=False, **extra),
        style={"width": width},
    )


def probe_section(entries: list[RunEntry], root_label: str, colours: dict) -> html.Div:
    """The probe view below the training panels: picker, the two panels, the diagnosis."""
    spp_controls = [
        _dropdown(
            ids.SPP_STAT, BROCK, options=[{"label": "Brock et al.'s panels", "value": BROCK}]
        ),
        dbc.RadioItems(
            id=ids.SPP_LAYERS,
            options=[
                {"label": "blocks", "value": "blocks"},
                {"label": "every layer", "value": "all"},
            ],
            value="blocks",
            inline=True,
        ),
    ]
    width_controls = [
        _dropdown(ids.WIDTH_STAT, figures.DEFAULT_WIDTH_STAT),
        _dropdown(ids.WIDTH_STEP, None, width="9rem", placeholder="last step"),
    ]
    return html.Div(
        [
            html.H4("Probes: before training", className="mt-4"),
            html.Div(
                dcc.Dropdown(
                    id=ids.PROBE_RUNS,
                    options=probe_options(entries, colours),
                    value=default_probes(entries),
                    multi=True,
                    placeholder=f"no probe files yet: {HOW_TO_PROBE.format(runs=root_label)}",
                ),
                className="mb-3",
            ),
            probe_panel("spp", ids.PROBE_PANELS["spp"], spp_controls),
            probe_panel("widths", ids.PROBE_PANELS["widths"], width_controls),
            dbc.Card(
                [
                    dbc.CardHeader(html.H5("Diagnosis at initialization", className="mb-0")),
                    dbc.CardBody(html.Div(id=ids.PROBE_DIAGNOSIS)),
                ],
                className="mb-3",
            ),
        ],
        id="probe-section",
    )


def probe_sidebar(entries: list[RunEntry], root_label: str, colours: dict) -> html.Div:
    """The probe files table of the sidebar, under the runs."""
    return html.Div(
        [
            html.Div("Probe files (before training)", className="form-label small mb-1 mt-2"),
            html.Div(probe_table(entries, root_label, colours), id=ids.PROBE_LIST),
        ]
    )


# The controls each probe panel depends on.
PROBE_PANEL_CONTROLS = {
    "spp": ("probes", "spp_stat", "spp_layers"),
    "widths": ("probes", "width_stat", "width_step"),
}


def _inputs(names=tuple(ids.PROBE_VALUES), kind=Input) -> dict:
    return {name: kind(*ids.PROBE_VALUES[name]) for name in names}


def register_probe_callbacks(app, index: RunIndex, root_label: str) -> None:
    """Wire the probe view: the list on the timer, the controls, each panel, PNGs, diagnosis."""

    @app.callback(
        Output(ids.PROBE_LIST, "children"),
        Output(ids.PROBE_RUNS, "options"),
        Input(ids.TIMER, "n_intervals"),
        prevent_initial_call=True,
    )
    def _on_timer(_n):
        entries = index.scan()
        colours = index.colours()
        return probe_table(entries, root_label, colours), probe_options(entries, colours)

    @app.callback(
        Output(ids.SPP_STAT, "options"),
        Output(ids.SPP_STAT, "value"),
        Output(ids.WIDTH_STAT, "options"),
        Output(ids.WIDTH_STAT, "value"),
        Output(ids.WIDTH_STEP, "options"),
        Output(ids.WIDTH_STEP, "value"),
        Input(ids.PROBE_RUNS, "value"),
        State(ids.SPP_STAT, "value"),
        State(ids.WIDTH_STAT, "value"),
        State(ids.WIDTH_STEP, "value"),
    )
    def _on_probes(selected, spp_stat, width_stat, width_step):
        v = probe_control_values(index, selected, spp_stat, width_stat, width_step)
        return (
            v["spp_options"],
            v["spp_stat"],
            v["width_options"],
            v["width_stat"],
            v["step_options"],
            v["width_step"],
        )

    for kind in ids.PROBE_PANELS:
        _register_panel(app, index, kind)

    @app.callback(
        Output(ids.probe_panel_id("png-download", MATCH), "data"),
        Output(ids.probe_panel_id("png-message", MATCH), "children"),
        inputs={
            "_clicks": Input(ids.probe_panel_id("png-button", MATCH), "n_clicks"),
            **_inputs(kind=State),
        },
        prevent_initial_call=True,
    )
    def _on_png(_clicks, **values):
        return probe_png(index, ctx.triggered_id["probe_panel"], values)

    @app.callback(Output(ids.PROBE_DIAGNOSIS, "children"), Input(ids.PROBE_RUNS, "value"))
    def _on_diagnosis(selected):
        return diagnosis_output(index, selected)


def _register_panel(app, index: RunIndex, kind: str) -> None:
    @app.callback(
        Output(ids.probe_panel_id("graph", kind), "figure"),
        Output(ids.probe_panel_id("message", kind), "children"),
        inputs={
            **_inputs(PROBE_PANEL_CONTROLS[kind]),
            "_zoom": State(ids.probe_panel_id("zoom", kind), "data"),
        },
    )
    def _on_controls(_zoom, **values):
        return probe_figure(index, kind, values, _zoom)

    @app.callback(
        Output(ids.probe_panel_id("zoom", kind), "data"),
        inputs={
            "_relayout": Input(ids.probe_panel_id("graph", kind), "relayoutData"),
            "_zoom": State(ids.probe_panel_id("zoom", kind), "data"),
            **_inputs(PROBE_PANEL_CONTROLS[kind], kind=State),
        },
        prevent_initial_call=True,
    )
    def _on_zoom(_relayout, _zoom, **values):
        try:
            view = probe_view_key(kind, ProbeControls.from_request(**values))
        except UsageError:
            return None
        return remembered_zoom(_zoom, view, _relayout)
