"""The dashboard's callbacks: plain functions of (index, values), and thin Dash wrappers."""

from __future__ import annotations

import json
import logging

import numpy as np
from dash import MATCH, Input, Output, State, ctx, dcc, html, no_update
from gradscope.app import ids
from gradscope.app._shared_answers import SharedAnswers
from gradscope.app.controls import (
    Controls,
    layer_type_options,
    pick_stat,
    ratio_options,
    stat_options,
)
from gradscope.app.layout import (
    diagnosis_heading,
    nonfinite_banner,
    run_options,
    run_table,
    run_versions,
)
from gradscope.app.panels import (
    PANEL_CONTROLS,
    apply_zoom,
    figure_notes,
    message_figure,
    panel_figure,
    remembered_zoom,
    view_key,
    zoomed_data,
)
from gradscope.app.run_index import RunIndex

from gradscope import figures
from gradscope.diagnosis import diagnose
from gradscope.errors import GradscopeError, RunFileError

log = logging.getLogger(__name__)

SLIDER_MARKS = 5  # labelled positions on the step slider
PNG_FIGURE_KINDS = {"flow": "flow", "heatmap": "heatmap", "ratio": "ratio", "training": "curves"}


def describe_error(index: RunIndex, error: Exception) -> str:
    """The one-line message a page shows for an error raised while answering a request."""
    if isinstance(error, GradscopeError):
        return index.relative_message(str(error))
    log.error("dashboard callback failed", exc_info=error)
    return f"internal error ({type(error).__name__}); details are in the server log"


def with_readable_runs(index: RunIndex, rels, build):
    """(build(runs), problems) over the runs of `rels` that can be read, so one bad file costs
    only its own part of a page: a run that fails to open, or whose read fails while `build`
    runs, is left out and its error is listed in `problems` (one line each).

    Raises when no run is left, or when `build` fails for another reason (with the problems
    appended to its message).
    """
    with index.open_good_runs(list(rels)) as (runs, problems):
        problems = [message for _, message in problems]
        while True:
            try:
                if not runs and problems:
                    raise RunFileError("; ".join(problems))
                return build(runs), problems
            except RunFileError as e:
                bad = next((run for run in runs if str(run.path) in str(e)), None)
                if bad is None:
                    raise
                runs = [run for run in runs if run is not bad]
                problems.append(index.relative_message(str(e)))
            except GradscopeError as e:
                if not problems:
                    raise
                raise type(e)("; ".join([str(e), *problems])) from e


# ----- plain functions: everything a callback does, testable without a browser -----


def refresh_run_list(index: RunIndex, root_label: str, selected, versions, search=None) -> tuple:
    """(run table, runs dropdown options, new versions or no_update) for the timer, the
    search box and a change of selection."""
    entries = index.scan()
    current = run_versions(entries, selected)
    colours = index.colours()
    return (
        run_table(entries, root_label, colours, selected, search),
        run_options(entries, colours),
        no_update if current == versions else current,
    )


def control_values(index: RunIndex, selected, stat, step_index, step_max) -> dict:
    """Options and values of the controls that depend on the selected runs.

    Keys: stat_options, stat, type_options, step_max, step_index, step_marks, ratio_options,
    message. A slider left at its last position stays at the last position as runs grow.
    """
    out = {
        "stat_options": [],
        "stat": None,
        "type_options": [],
        "step_max": 0,
        "step_index": 0,
        "step_marks": None,
        "ratio_options": [],
        "message": "",
    }
    try:
        controls = Controls.from_request(runs=selected)
        if not controls.runs:
            out["message"] = "Select one or more runs to compare."
            return out

        def options(runs):
            steps = figures.available_steps(runs)
            return stat_options(runs), steps, layer_type_options(runs), ratio_options(runs)

        (available, steps, out["type_options"], out["ratio_options"]), problems = (
            with_readable_runs(index, controls.runs, options)
        )
    except Exception as e:  # noqa: BLE001 - shown on the page
        out["message"] = describe_error(index, e)
        return out
    out["message"] = "\n".join(problems)
    out["stat_options"] = available
    out["stat"] = pick_stat(stat, available)
    last = max(len(steps) - 1, 0)
    at_end = step_index is None or step_max is None or step_index >= step_max
    out["step_max"] = last
    out["step_index"] = last if at_end else min(int(step_index), last)
    if len(steps):
        marks = sorted({round(i * last / (SLIDER_MARKS - 1)) for i in range(SLIDER_MARKS)})
        out["step_marks"] = {str(i): str(int(steps[i])) for i in marks}
    return out


def step_label(index: RunIndex, selected, step_index, window) -> str:
    """What the step slider and window point at, in steps."""
    try:
        controls = Controls.from_request(runs=selected, step_index=step_index, window=window)
        if not controls.runs:
            return ""
        steps, _ = with_readable_runs(index, controls.runs, figures.available_steps)
    except Exception as e:  # noqa: BLE001 - shown on the page
        return describe_error(index, e)
    if len(steps) == 0:
        return "no records yet"
    last = len(steps) - 1
    position = last if controls.step_index is None else min(controls.step_index, last)
    if controls.window and controls.window > 1:
        first = max(0, position - controls.window + 1)
        latest = " (latest)" if position == len(steps) - 1 else ""
        return f"mean over steps {int(steps[first])}..{int(steps[position])}{latest}"
    if position == len(steps) - 1:
        (common, ends), _ = with_readable_runs(index, controls.runs, _latest_steps)
        if len(set(ends.values())) > 1:
            each = ", ".join(f"{label} at {end}" for label, end in ends.items())
            return f"step {common}: the latest step all selected runs have ({each})"
        return f"step {common} (latest)"
    return f"step {int(steps[position])}"


def _latest_steps(runs) -> tuple[int, dict]:
    """(the latest step every run has, {run label: its own latest step})."""
    ends = {figures.run_label(run): int(run.steps[-1]) for run in runs if len(run.steps)}
    return figures.latest_common_step(runs), ends


def step_input(index: RunIndex, selected, step_index, typed=None, was_typed=False) -> tuple:
    """(slider position or no_update, the step box's value) for the box beside the slider.

    The box shows the step the flow curve draws at the slider's position (at the last: the
    latest step every selected run has). A step typed in it (applied on Enter or on leaving
    the box) moves the slider to the nearest record, and the box then shows that record's step.
    """
    try:
        controls = Controls.from_request(runs=selected, step_index=step_index)
        if not controls.runs:
            return no_update, None
        (steps, common), _ = with_readable_runs(index, controls.runs, _steps_and_latest)
    except Exception:  # noqa: BLE001 - the step label beside the box shows what is wrong
        return no_update, no_update
    if len(steps) == 0:
        return no_update, None
    last = len(steps) - 1
    position = last if controls.step_index is None else min(controls.step_index, last)

    def shown(at: int) -> int:
        return common if at == last else int(steps[at])

    if not was_typed:
        return no_update, shown(position)
    if isinstance(typed, bool) or not isinstance(typed, (int, float)) or typed != typed:
        return no_update, shown(position)  # emptied or not a number: back to the slider's step
    if typed == shown(position):
        return no_update, shown(position)  # unchanged: a slider at "latest" stays there
    nearest = int(figures.nearest_positions(steps, np.array([typed]))[0])
    return nearest, shown(nearest)


def _steps_and_latest(runs) -> tuple:
    """(every step of the runs, sorted; the latest step all of them have), or no latest."""
    steps = figures.available_steps(runs)
    return steps, figures.latest_common_step(runs) if len(steps) else None


def figure_output(index: RunIndex, kind: str, values: dict, zoom: dict | None = None) -> tuple:
    """(figure, message) of panel `kind` for the control `values`, keeping the user's `zoom`."""
    try:
        fig, message, view = _panel(index, kind, values)
        return apply_zoom(fig, view, zoom), message
    except Exception as e:  # noqa: BLE001 - shown on the page
        message = describe_error(index, e)
        return message_figure(message), message


def shared_figure_output(
    answers: SharedAnswers, index: RunIndex, kind: str, values: dict, versions, zoom=None
) -> tuple:
    """`figure_output` as the page gets it: the figure as plotly's JSON data, built once for
    every page asking with the same controls and run `versions` (then only the user's zoom
    is applied), so many pages polling live runs cost about what one does."""
    try:
        fig, message, view = answers.get(
            ["figure", kind, values, versions], lambda: _panel_data(index, kind, values)
        )
        return zoomed_data(fig, view, zoom), message
    except Exception as e:  # noqa: BLE001 - shown on the page
        message = describe_error(index, e)
        return message_figure(message), message


def _panel(index: RunIndex, kind: str, values: dict) -> tuple:
    """(figure, message, view key) of panel `kind`; raises what stops it being drawn."""
    controls = Controls.from_request(**values)
    colours = index.colours()
    fig, problems = with_readable_runs(
        index, controls.runs, lambda runs: panel_figure(kind, runs, controls, colours)
    )
    return fig, "\n".join([*figure_notes(fig), *problems]), view_key(kind, controls)


def _panel_data(index: RunIndex, kind: str, values: dict) -> tuple:
    """`_panel` with the figure turned into plotly's JSON data once (arrays base64-encoded),
    which each answer then sends as it is."""
    fig, message, view = _panel(index, kind, values)
    return json.loads(fig.to_json()), message, view


def zoom_output(kind: str, values: dict, zoom: dict | None, relayout: dict | None):
    """The zoom store of panel `kind` after a plotly relayout event (no_update if malformed)."""
    try:
        controls = Controls.from_request(**values)
    except GradscopeError:
        return no_update  # the figure callback shows what is wrong with these values
    return remembered_zoom(zoom, view_key(kind, controls), relayout)


def png_download(index: RunIndex, kind: str, values: dict) -> tuple:
    """(dcc.Download data, message): the panel's figure as the PNG `gradscope export` writes."""
    from gradscope.export import default_size, figure_png_bytes, style_for_print

    try:
        controls = Controls.from_request(**values)
        colours = index.colours()
        fig, _ = with_readable_runs(
            index, controls.runs, lambda runs: panel_figure(kind, runs, controls, colours)
        )
        fig = style_for_print(fig)
        width, height = default_size(fig, PNG_FIGURE_KINDS[kind])
        png = figure_png_bytes(fig, width=width, height=height)
    except Exception as e:  # noqa: BLE001 - shown on the page
        return no_update, describe_error(index, e)
    name = f"{kind}-{controls.stat}.png" if controls.stat else f"{kind}.png"
    return dcc.send_bytes(png, name), ""


def diagnosis_output(index: RunIndex, selected) -> list:
    """The diagnosis text of each selected run, or why there is none."""
    try:
        controls = Controls.from_request(runs=selected)
        blocks = []
        colours = index.colours()
        with index.open_good_runs(list(controls.runs)) as (runs, problems):
            for run in runs:
                label = figures.run_label(run)
                blocks.append(diagnosis_heading(label, colours.get(label)))
                try:
                    text = diagnose(run).to_text()
                except GradscopeError as e:  # this run only: the others still show
                    message = describe_error(index, e)
                    blocks.append(html.Div(message, className="panel-message text-danger"))
                    continue
                blocks.append(
                    html.Pre(
                        text, className="diagnosis-text small", style={"whiteSpace": "pre-wrap"}
                    )
                )
        for rel, message in problems:
            blocks.append(diagnosis_heading(rel, None))
            blocks.append(html.Div(message, className="panel-message text-danger"))
    except Exception as e:  # noqa: BLE001 - shown on the page
        message = describe_error(index, e)
        return [html.Div(message, className="panel-message text-danger")]
    return blocks


def nonfinite_output(index: RunIndex, selected) -> list:
    """The banner over the panels: each selected run's stored origins of non-finite values
    (the flight recorder's sentences, in step order, as the heatmap marks them); empty when no
    run has one."""
    try:
        controls = Controls.from_request(runs=selected)
        colours = index.colours()
        origins = []
        with index.open_good_runs(list(controls.runs)) as (runs, _):
            for run in runs:
                label = figures.run_label(run)
                sentences = list(figures.marked_origins(run)["message"])
                if sentences:
                    origins.append((label, colours.get(label), sentences))
    except Exception as e:  # noqa: BLE001 - shown on the page
        return [html.Div(describe_error(index, e), className="panel-message text-danger")]
    return nonfinite_banner(origins)


# ----- Dash wrappers -----


def _control_inputs(names, kind=Input) -> dict:
    return {name: kind(*ids.CONTROL_VALUES[name]) for name in names}


def register_callbacks(app, index: RunIndex, root_label: str) -> None:
    """Wire the plain functions above to the page's components. What depends on the selected
    runs' versions is answered once for every page asking the same (`SharedAnswers`)."""
    answers = SharedAnswers()

    @app.callback(
        Output(ids.RUN_LIST, "children"),
        Output(ids.RUNS, "options"),
        Output(ids.VERSIONS, "data"),
        Input(ids.TIMER, "n_intervals"),
        Input(ids.RUN_SEARCH, "value"),
        Input(ids.RUNS, "value"),
        State(ids.VERSIONS, "data"),
        prevent_initial_call=True,
    )
    def _on_timer(_n, search, selected, versions):
        table, options, new_versions = refresh_run_list(
            index, root_label, selected, versions, search
        )
        # Only the timer reports new records: a new selection redraws through its own input.
        return table, options, new_versions if ctx.triggered_id == ids.TIMER else no_update

    @app.callback(
        Output(ids.STAT, "options"),
        Output(ids.STAT, "value"),
        Output(ids.LAYER_TYPES, "options"),
        Output(ids.STEP, "max"),
        Output(ids.STEP, "value"),
        Output(ids.STEP, "marks"),
        Output(ids.RATIO_NUMERATOR, "options"),
        Output(ids.PAGE_MESSAGE, "children"),
        Input(ids.RUNS, "value"),
        Input(ids.VERSIONS, "data"),
        State(ids.STAT, "value"),
        State(ids.STEP, "value"),
        State(ids.STEP, "max"),
    )
    def _on_runs(selected, versions, stat, step_index, step_max):
        v = answers.get(
            ["controls", selected, versions, stat, step_index, step_max],
            lambda: control_values(index, selected, stat, step_index, step_max),
        )
        return (
            v["stat_options"],
            v["stat"],
            v["type_options"],
            v["step_max"],
            v["step_index"],
            v["step_marks"],
            v["ratio_options"],
            v["message"],
        )

    @app.callback(
        Output(ids.STEP, "value", allow_duplicate=True),
        Output(ids.STEP_INPUT, "value"),
        Input(ids.STEP, "value"),
        Input(ids.STEP_INPUT, "value"),
        Input(ids.VERSIONS, "data"),
        State(ids.RUNS, "value"),
        prevent_initial_call=True,
    )
    def _on_step_input(step_index, typed, _versions, selected):
        was_typed = ctx.triggered_id == ids.STEP_INPUT
        return step_input(index, selected, step_index, typed, was_typed)

    @app.callback(
        Output(ids.STEP_LABEL, "children"),
        Input(ids.RUNS, "value"),
        Input(ids.STEP, "value"),
        Input(ids.WINDOW, "value"),
        Input(ids.VERSIONS, "data"),
    )
    def _on_step(selected, step_index, window, versions):
        return answers.get(
            ["step", selected, versions, step_index, window],
            lambda: step_label(index, selected, step_index, window),
        )

    for kind in ids.PANELS:
        _register_panel(app, index, answers, kind)

    @app.callback(
        Output(ids.panel_id("png-download", MATCH), "data"),
        Output(ids.panel_id("png-message", MATCH), "children"),
        inputs={
            "_clicks": Input(ids.panel_id("png-button", MATCH), "n_clicks"),
            **_control_inputs(ids.CONTROL_VALUES, kind=State),
        },
        prevent_initial_call=True,
    )
    def _on_png(_clicks, **values):
        return png_download(index, ctx.triggered_id["panel"], values)

    @app.callback(
        Output(ids.DIAGNOSIS, "children"),
        Input(ids.RUNS, "value"),
        Input(ids.VERSIONS, "data"),
    )
    def _on_diagnosis(selected, versions):
        return answers.get(
            ["diagnosis", selected, versions], lambda: diagnosis_output(index, selected)
        )

    @app.callback(
        Output(ids.NONFINITE, "children"),
        Input(ids.RUNS, "value"),
        Input(ids.VERSIONS, "data"),
    )
    def _on_nonfinite(selected, _versions):
        return nonfinite_output(index, selected)


def _register_panel(app, index: RunIndex, answers: SharedAnswers, kind: str) -> None:
    """One callback per kind of figure: redraw it when its controls or its runs change."""

    controls = ("runs", *PANEL_CONTROLS[kind])

    @app.callback(
        Output(ids.panel_id("graph", kind), "figure"),
        Output(ids.panel_id("message", kind), "children"),
        inputs={
            "_versions": Input(ids.VERSIONS, "data"),
            **_control_inputs(controls),
            "_zoom": State(ids.panel_id("zoom", kind), "data"),
        },
    )
    def _on_controls(_versions, _zoom, **values):
        return shared_figure_output(answers, index, kind, values, _versions, _zoom)

    @app.callback(
        Output(ids.panel_id("zoom", kind), "data"),
        inputs={
            "_relayout": Input(ids.panel_id("graph", kind), "relayoutData"),
            "_zoom": State(ids.panel_id("zoom", kind), "data"),
            **_control_inputs(controls, kind=State),
        },
        prevent_initial_call=True,
    )
    def _on_zoom(_relayout, _zoom, **values):
        return zoom_output(kind, values, _zoom, _relayout)
