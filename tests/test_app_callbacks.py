"""The dashboard without a browser: run index safety, callback logic, HTTP payloads, CLI."""

import base64
import importlib
import json
import os
import struct
import threading
import time

import numpy as np
import pytest
from dash import no_update
from gradscope.app import create_app, ids
from gradscope.app._shared_answers import SharedAnswers
from gradscope.app.callbacks import (
    control_values,
    diagnosis_output,
    figure_output,
    nonfinite_output,
    png_download,
    refresh_run_list,
    shared_figure_output,
    step_input,
    step_label,
)
from gradscope.app.controls import Controls, flow_position
from gradscope.app.layout import newest_runs, page
from gradscope.app.panels import view_key
from gradscope.app.run_index import RunIndex

from gradscope.cli import main as cli_main
from gradscope.errors import RunFileError, UsageError
from gradscope.store import RunWriter, open_run
from tests.run_files import LAYERS, STATS, write_run, write_runs_folder

NEWEST_TWO = ["sweep/lr01.h5", "baseline/tanh.h5"]


@pytest.fixture
def runs_dir(tmp_path):
    return write_runs_folder(tmp_path / "runs")


@pytest.fixture
def index(runs_dir):
    idx = RunIndex(runs_dir)
    yield idx
    idx.close()


def values(**overrides):
    """Control values as the browser sends them on page load, with `overrides`."""
    base = {
        "runs": NEWEST_TWO,
        "stat": "grad_norm",
        "layer_types": [],
        "layer_pattern": None,
        "step_index": None,
        "window": None,
        "scale": "log",
        "depth_axis": "aligned",
        "lines": "by_type",
        "smoothing": 0.6,
    }
    base.update(overrides)
    return base


def find(component, wanted_id):
    """The component with id `wanted_id` inside a Dash layout tree, or None."""
    if getattr(component, "id", None) == wanted_id:
        return component
    children = getattr(component, "children", None)
    if children is None or isinstance(children, str):
        return None
    for child in children if isinstance(children, (list, tuple)) else [children]:
        found = find(child, wanted_id)
        if found is not None:
            return found
    return None


def text_of(component) -> str:
    """All the text inside a Dash component tree."""
    if isinstance(component, str):
        return component
    if isinstance(component, (list, tuple)):
        return " ".join(text_of(c) for c in component)
    children = getattr(component, "children", None)
    return "" if children is None else text_of(children)


# ----- run index -----


@pytest.mark.parametrize(
    "rel",
    ["../../etc/passwd", "/etc/passwd", "baseline/../../outside.h5", "notes.txt", "missing.h5", ""],
)
def test_resolve_refuses_anything_but_run_files_inside_the_folder(index, rel):
    with pytest.raises(UsageError):
        index.resolve(rel)


def test_symlink_leading_outside_is_neither_listed_nor_opened(index, runs_dir, tmp_path):
    outside = tmp_path / "outside.h5"
    write_run(outside)
    (runs_dir / "link.h5").symlink_to(outside)
    assert "link.h5" not in [e.rel for e in index.scan()]
    with pytest.raises(UsageError, match="outside the runs folder"):
        index.resolve("link.h5")


def test_scan_lists_runs_by_folder_with_model_records_and_errors(index):
    entries = {e.rel: e for e in index.scan()}
    assert list(entries) == ["broken.h5", "baseline/relu.h5", "baseline/tanh.h5", "sweep/lr01.h5"]
    assert entries["baseline/tanh.h5"].model == "PlainNet20"
    assert entries["sweep/lr01.h5"].records == 30
    assert not entries["sweep/lr01.h5"].is_live
    broken = entries["broken.h5"]
    assert "not an HDF5 file" in broken.error
    assert str(index.root) not in broken.error  # the page shows paths relative to the folder


def test_missing_runs_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        RunIndex(tmp_path / "nope")


def test_cached_run_follows_appends_and_replacement(index, runs_dir):
    path = runs_dir / "live" / "growing.h5"
    writer = write_run(path, n_records=5, close=False)
    writer.flush() if hasattr(writer, "flush") else None
    index_entry = {e.rel: e for e in index.scan()}["live/growing.h5"]
    assert index_entry.is_live
    with index.open_runs(["live/growing.h5"]) as (run,):
        first = len(run.steps)
    for i in range(5, 9):
        writer.append(10 * i, writer_row(writer))
    writer.close()
    with index.open_runs(["live/growing.h5"]) as (run,):
        assert len(run.steps) == 9 > first
    path.unlink()
    write_run(path, n_records=3)  # a new file under the same name
    with index.open_runs(["live/growing.h5"]) as (run,):
        assert len(run.steps) == 3


def writer_row(writer):
    import numpy as np

    return np.ones((len(writer.stats), len(writer.layers)), dtype=np.float32)


# ----- layout -----


def test_page_preselects_the_newest_readable_runs(index):
    layout = page(index, "runs")
    assert find(layout, ids.RUNS).value == NEWEST_TWO
    assert newest_runs(index.scan(), count=5)[-1] == "baseline/relu.h5"
    listing = text_of(find(layout, ids.RUN_LIST))
    assert "broken.h5 not an HDF5 file" in listing and "error" in listing
    assert "ResNet20 sweep 30 complete" in listing  # model, folder, records, state
    assert "PlainNet20 baseline 20 complete" in listing
    assert set(find(layout, ids.VERSIONS).data) == set(NEWEST_TWO)


def test_run_list_says_which_run_ended_by_a_write_error_and_what_was_dropped(tmp_path):
    import h5py

    from gradscope.store import _schema as schema

    write_run(tmp_path / "exp" / "full.h5", n_records=6)
    with h5py.File(tmp_path / "exp" / "full.h5", "r+", libver="latest") as f:
        status = f["status"][0]
        f["status"][:] = schema.status_row(
            True,
            status["heartbeat"],
            6,
            6,
            6,
            dropped_records=4,
            dropped_metrics=9,
            error="No space left on device [errno 28]",
        )
    index = RunIndex(tmp_path)
    (entry,) = index.scan()
    assert entry.write_error == "No space left on device [errno 28]" and entry.dropped == 4
    listing = text_of(find(page(index, "runs"), ids.RUN_LIST))
    assert "ResNet20 exp 6 (4 dropped) write error" in listing


def test_empty_folder_shows_how_to_record(tmp_path):
    idx = RunIndex(tmp_path)
    layout = page(idx, "myruns")
    assert find(layout, ids.RUNS).value == []
    listing = text_of(find(layout, ids.RUN_LIST))
    assert "No run files" in listing and 'gradscope.attach(model, "myruns/' in listing
    assert control_values(idx, [], None, None, None)["message"].startswith("Select")


# ----- controls -----


def test_controls_offer_the_stats_and_types_of_the_selected_runs(index, runs_dir):
    write_run(runs_dir / "other" / "few.h5", stats=["grad_norm", "act_mean"])
    v = control_values(index, ["sweep/lr01.h5", "other/few.h5"], None, None, None)
    assert v["stat_options"] == [*STATS, "act_mean"]
    assert v["stat"] == "grad_norm"
    assert v["type_options"] == ["BatchNorm2d", "Conv2d", "Linear"]
    assert v["step_max"] == v["step_index"] == 29
    assert v["step_marks"]["29"] == "290"
    kept = control_values(index, ["sweep/lr01.h5"], "update_ratio", 3, 29)
    assert (kept["stat"], kept["step_index"]) == ("update_ratio", 3)


def test_slider_at_the_end_follows_a_growing_run(index):
    v = control_values(index, ["baseline/relu.h5"], None, step_index=19, step_max=19)
    assert v["step_index"] == 19
    v = control_values(index, ["sweep/lr01.h5"], None, step_index=19, step_max=19)
    assert v["step_index"] == 29  # was at the end: stays at the end


@pytest.mark.parametrize(
    "bad",
    [
        {"scale": "bogus"},
        {"depth_axis": "sideways"},
        {"step_index": -1},
        {"window": "x"},
        {"runs": [1, 2]},
        {"layer_types": {"a": 1}},
    ],
)
def test_controls_reject_malformed_requests(bad):
    with pytest.raises(UsageError):
        Controls.from_request(**values(**bad))


def test_flow_position_maps_slider_and_window_to_steps(index):
    with index.open_runs(["sweep/lr01.h5"]) as runs:
        assert flow_position(runs, None, None) == {"step": None, "window": None}
        assert flow_position(runs, 29, None) == {"step": None, "window": None}
        assert flow_position(runs, 4, None) == {"step": 40, "window": None}
        assert flow_position(runs, 4, 3) == {"step": None, "window": (20, 41)}
        with pytest.raises(UsageError, match="beyond"):
            flow_position(runs, 30, None)
    label = step_label(index, ["sweep/lr01.h5"], 4, 3)
    assert label == "mean over steps 20..40"


def test_the_step_box_shows_and_takes_steps_not_record_indices(index):
    # sweep/lr01 records steps 0, 10, ..., 290 and baseline/tanh 0, ..., 190: 30 positions
    pair = NEWEST_TWO
    assert step_input(index, pair, 29) == (no_update, 190)  # latest: what both runs have
    assert step_input(index, pair, None) == (no_update, 190)
    assert step_input(index, pair, 19) == (no_update, 190)  # step 190 is position 19 too
    assert step_input(index, pair, 4) == (no_update, 40)  # the slider moved: the box follows
    assert step_input(index, pair, 29, 47, was_typed=True) == (5, 50)  # nearest record
    assert step_input(index, pair, 29, 45, was_typed=True) == (4, 40)  # a tie: the earlier
    assert step_input(index, pair, 5, 10_000, was_typed=True) == (29, 190)  # past the end
    assert step_input(index, pair, 5, -3, was_typed=True) == (0, 0)
    assert step_input(index, pair, 29, 190, was_typed=True) == (no_update, 190)  # stays latest
    assert step_input(index, pair, 5, None, was_typed=True) == (no_update, 50)  # emptied
    assert step_input(index, [], None) == (no_update, None)
    assert step_input(index, ["../x.h5"], 3) == (no_update, no_update)  # the label says why
    # and what the slider then points at is that step, for the flow curve and its label
    assert step_label(index, pair, 5, None) == "step 50"
    fig, _ = figure_output(index, "flow", values(step_index=5))
    assert fig.layout.title.text.endswith("step 50")


def test_the_ratio_panel_lets_the_user_choose_its_numerator(index):
    options = control_values(index, NEWEST_TWO, None, None, None)["ratio_options"]
    assert options == [
        {"label": "sweep/lr01 / baseline/tanh", "value": 0},
        {"label": "baseline/tanh / sweep/lr01", "value": 1},
    ]
    assert control_values(index, NEWEST_TWO[:1], None, None, None)["ratio_options"] == []
    first, _ = figure_output(index, "ratio", values())
    second, _ = figure_output(index, "ratio", values(ratio_numerator=1))
    assert "ratio sweep/lr01 / baseline/tanh by layer" in first.layout.title.text
    assert "ratio baseline/tanh / sweep/lr01 by layer" in second.layout.title.text
    assert second.layout.coloraxis.colorbar.title.text.endswith("red = baseline/tanh more")
    # sweep/lr01 is baseline/tanh's values x 4 (scale 2 against 0.5): log10 of 4, and of 1/4
    np.testing.assert_allclose(np.asarray(first.data[0].z, float), np.log10(4), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(second.data[0].z, float), -np.log10(4), rtol=1e-5)
    zoom = {"view": view_key("ratio", Controls.from_request(**values())), "ranges": {}}
    assert view_key("ratio", Controls.from_request(**values(ratio_numerator=1))) == zoom["view"]
    with pytest.raises(UsageError, match="ratio numerator"):
        Controls.from_request(**values(ratio_numerator=2))


# ----- figures and messages -----


@pytest.mark.parametrize(
    ("kind", "min_traces"), [("flow", 2), ("heatmap", 2), ("ratio", 1), ("training", 2)]
)
def test_every_panel_draws_the_selected_runs(index, kind, min_traces):
    assert set(ids.PANELS) == {"flow", "heatmap", "ratio", "training"}
    fig, message = figure_output(index, kind, values())
    assert message == ""
    assert len(fig.data) >= min_traces
    assert fig.layout.uirevision  # the zoom survives timer redraws


def test_changing_the_statistic_changes_the_flow_curve(index):
    grad, _ = figure_output(index, "flow", values())
    weight, _ = figure_output(index, "flow", values(stat="weight_norm"))
    assert grad.layout.title.text.startswith("Gradient norm")
    assert weight.layout.title.text.startswith("Weight norm")
    assert list(weight.data[0].y) == pytest.approx([2 * y for y in grad.data[0].y])


def test_layer_filter_and_runs_change_the_heatmap(index):
    one, _ = figure_output(index, "heatmap", values(runs=["baseline/relu.h5"]))
    three, _ = figure_output(index, "heatmap", values(runs=[*NEWEST_TWO, "baseline/relu.h5"]))
    assert len(three.data) == 3 * len(one.data)
    convs, _ = figure_output(index, "flow", values(layer_types=["Conv2d"]))
    assert len(convs.data[0].y) == 3
    pattern, _ = figure_output(index, "flow", values(layer_pattern="layer*", lines="all"))
    assert len(pattern.data[0].y) == 3


def test_the_origin_of_a_non_finite_value_is_marked_and_said_above_the_panels(index, runs_dir):
    message = "step 50: first non-finite value in the forward pass of layer1.0.conv1 (Conv2d)"
    with RunWriter(runs_dir / "baseline" / "relu.h5", LAYERS, STATS, resume=True) as w:
        w.event(
            {
                "step": 50,
                "kind": "nonfinite",
                "phase": "forward",
                "layer": "layer1.0.conv1",
                "message": message,
            }
        )
        w.event({"step": 70, "kind": "nonfinite", "phase": "loss", "message": "step 70: loss"})
    fig, _ = figure_output(index, "heatmap", values(runs=["baseline/relu.h5"]))
    (cross,) = [t for t in fig.data if t.type == "scatter"]
    assert (list(cross.x), list(cross.y), list(cross.customdata)) == (
        [50],
        ["layer1.0.conv1"],
        [message],
    )
    assert [(line.x0, line.line.dash) for line in fig.layout.shapes] == [(70, "dot")]
    filtered, _ = figure_output(
        index, "heatmap", values(runs=["baseline/relu.h5"], layer_pattern="fc")
    )
    assert sorted(line.x0 for line in filtered.layout.shapes) == [50, 70]  # its row left out
    banner = nonfinite_output(index, [*NEWEST_TWO, "baseline/relu.h5"])
    said = [part.strip() for part in text_of(banner).split("baseline/relu: ")[1:]]
    assert said == [message, "step 70: loss"]
    assert nonfinite_output(index, NEWEST_TWO) == []  # no origin, no banner
    assert find(page(index, "runs"), ids.NONFINITE) is not None


def test_zoom_key_ignores_the_step_but_not_the_statistic(index):
    a, _ = figure_output(index, "flow", values())
    b, _ = figure_output(index, "flow", values(step_index=3, window=2))
    c, _ = figure_output(index, "flow", values(stat="weight_norm"))
    assert a.layout.uirevision == b.layout.uirevision != c.layout.uirevision


def test_pages_asking_the_same_share_one_answer_built_once():
    answers = SharedAnswers(kept=2, seconds=60)
    built = []
    started = threading.Event()

    def build():
        built.append(1)
        started.wait(5)  # the other requests arrive while it is built
        return object()

    threads = [
        threading.Thread(target=lambda: got.append(answers.get(["figure", 1], build)))
        for _ in range(8)
    ]
    got = []
    for thread in threads:
        thread.start()
    started.set()
    for thread in threads:
        thread.join(10)
    assert len(built) == 1 and len(got) == 8 and all(g is got[0] for g in got)
    assert answers.get(["figure", 1], object) is got[0]
    with pytest.raises(ValueError):
        answers.get(["broken"], lambda: int("x"))
    assert answers.get(["broken"], lambda: 3) == 3  # a failed build is not kept
    answers.get(["another"], object)  # two kept: the oldest goes
    assert answers.get(["figure", 1], lambda: "rebuilt") == "rebuilt"
    assert SharedAnswers(seconds=0).get(["k"], lambda: 1) == 1


def test_the_shared_figure_is_the_figure_as_data_with_each_users_zoom(index):
    answers = SharedAnswers()
    versions = {rel: [20, False, 1] for rel in NEWEST_TWO}
    fig, message = figure_output(index, "flow", values())
    data, shared_message = shared_figure_output(answers, index, "flow", values(), versions)
    assert shared_message == message and data == json.loads(fig.to_json())
    view = fig.layout.uirevision
    zoom = {"view": view, "ranges": {"yaxis": [0.1, 2.0]}}
    zoomed, _ = shared_figure_output(answers, index, "flow", values(), versions, zoom)
    assert (
        zoomed["layout"]["yaxis"]["range"] == [0.1, 2.0]
        and not zoomed["layout"]["yaxis"]["autorange"]
    )
    again, _ = shared_figure_output(answers, index, "flow", values(), versions)
    assert again is data and "range" not in again["layout"]["yaxis"]  # the shared one is intact
    _, bad = shared_figure_output(answers, index, "flow", values(stat="act_zero_frac"), versions)
    assert "'act_zero_frac' is not in" in bad


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"runs": ["../../etc/passwd"]}, "outside the runs folder"),
        ({"runs": ["broken.h5"]}, "not an HDF5 file"),
        ({"stat": "act_zero_frac"}, "'act_zero_frac' is not in"),
        ({"step_index": 500}, "beyond"),
        ({"layer_types": ["LSTM"]}, "no layer matches"),
        ({"runs": []}, "select a run"),
    ],
)
def test_bad_requests_become_a_message_on_the_page(index, overrides, expected):
    fig, message = figure_output(index, "flow", values(**overrides))
    assert expected in message
    assert "Traceback" not in message and str(index.root) not in message
    assert expected in fig.layout.annotations[0].text
    assert len(fig.data) == 0


def test_ratio_panel_asks_for_two_runs(index):
    _, message = figure_output(index, "ratio", values(runs=["baseline/relu.h5"]))
    assert "two runs" in message


def test_crafted_http_payload_cannot_read_outside_the_folder(runs_dir):
    client = create_app(runs_dir).server.test_client()
    flow = ids.panel_id("graph", "flow")
    inputs = [{"id": ids.VERSIONS, "property": "data", "value": {}}]
    inputs += [
        {"id": component, "property": prop, "value": values(runs=["../../etc/passwd"])[name]}
        for name, (component, prop) in ids.CONTROL_VALUES.items()
        if name
        in (
            "runs",
            "stat",
            "layer_types",
            "layer_pattern",
            "step_index",
            "window",
            "scale",
            "depth_axis",
            "lines",
        )
    ]
    outputs = [
        {"id": flow, "property": "figure"},
        {"id": ids.panel_id("message", "flow"), "property": "children"},
    ]
    body = {
        "output": "..{}.figure...{}.children..".format(
            json.dumps(flow, sort_keys=True, separators=(",", ":")),
            json.dumps(ids.panel_id("message", "flow"), sort_keys=True, separators=(",", ":")),
        ),
        "outputs": outputs,
        "inputs": inputs,
        "changedPropIds": [f"{ids.RUNS}.value"],
        "state": [{"id": ids.panel_id("zoom", "flow"), "property": "data", "value": None}],
    }
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "outside the runs folder" in text
    assert "root:" not in text and "Traceback" not in text


def test_diagnosis_text_for_each_selected_run(index):
    blocks = diagnosis_output(index, NEWEST_TWO)
    assert [text_of(b).strip() for b in blocks[::2]] == ["sweep/lr01", "baseline/tanh"]
    assert all(isinstance(b.children, str) and b.children for b in blocks[1::2])
    bad = diagnosis_output(index, ["../x.h5"])
    assert "outside the runs folder" in text_of(bad)


def test_timer_reports_new_records_only_when_there_are_some(index, runs_dir):
    _, options, versions = refresh_run_list(index, "runs", NEWEST_TWO, {})
    assert [o["value"] for o in options if o["disabled"]] == ["broken.h5"]
    assert set(versions) == set(NEWEST_TWO)
    _, _, unchanged = refresh_run_list(index, "runs", NEWEST_TWO, versions)
    assert unchanged is not versions and not isinstance(unchanged, dict)  # no_update
    path = runs_dir / "sweep" / "lr01.h5"
    path.unlink()
    write_run(path, n_records=31)
    _, _, changed = refresh_run_list(index, "runs", NEWEST_TWO, versions)
    assert changed["sweep/lr01.h5"][0] == 31


def test_png_download_is_the_exported_image(index):
    export = pytest.importorskip("gradscope.export")
    data, message = png_download(index, "heatmap", values())
    assert message == ""
    assert data["filename"] == "heatmap-grad_norm.png" and data["base64"]
    png = base64.b64decode(data["content"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from gradscope.app.panels import panel_figure

    with index.open_runs(NEWEST_TWO) as runs:
        fig = panel_figure("heatmap", runs, Controls(runs=tuple(NEWEST_TWO), stat="grad_norm"))
    width, height = export.default_size(fig, "heatmap")
    assert (width, height) == (2 * export.PANEL_WIDTH + export.LABELS_WIDTH, fig.layout.height)
    assert png[16:24] == struct.pack(">II", width, height)  # the size export gives it
    _, message = png_download(index, "heatmap", values(stat="nope"))
    assert "'nope' is not in" in message


# ----- CLI and WSGI -----


def test_cli_dashboard_missing_folder_exits_2_with_one_line(tmp_path, capsys):
    code = cli_main(["dashboard", "--runs", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gradscope dashboard: error: runs folder") and err.count("\n") == 1


def test_cli_dashboard_runs_naming_a_file_says_it_is_a_file(tmp_path, capsys):
    run = tmp_path / "exp" / "run.h5"
    write_run(run)
    code = cli_main(["dashboard", "--runs", str(run)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"gradscope dashboard: error: --runs {run}: is a file, not a folder; pass the folder "
        f"that holds the run files (--runs {tmp_path / 'exp'})\n"
    )
    with pytest.raises(UsageError, match="is a file; give the folder"):
        RunIndex(run)


def test_cli_dashboard_defaults_to_loopback():
    from gradscope.cli import build_parser
    from gradscope.cli.dashboard_cmd import dashboard_url

    args = build_parser().parse_args(["dashboard"])
    assert (args.runs, args.host, args.port) == ("runs", "127.0.0.1", 8050)
    assert dashboard_url("::1", 9000) == "http://[::1]:9000/"


def test_wsgi_server_serves_the_folder_named_by_the_environment(runs_dir, monkeypatch):
    monkeypatch.setenv("GRADSCOPE_RUNS", str(runs_dir))
    import gradscope.app.server

    server = importlib.reload(gradscope.app.server).server
    assert server.test_client().get("/").status_code == 200
    layout = server.test_client().get("/_dash-layout").get_data(as_text=True)
    assert "lr01.h5" in layout
    monkeypatch.setenv("GRADSCOPE_RUNS", os.fspath(runs_dir / "missing"))
    with pytest.raises(UsageError):
        importlib.reload(gradscope.app.server)


def test_zoom_is_remembered_per_view_and_reapplied_on_redraw(index):
    from gradscope.app.callbacks import zoom_output

    zoom = zoom_output("flow", values(), None, {"xaxis.range[0]": 1, "xaxis.range[1]": 3})
    zoom = zoom_output("flow", values(), zoom, {"yaxis.range": [-2, 0]})
    assert zoom["ranges"] == {"xaxis": [1, 3], "yaxis": [-2, 0]}
    fig, _ = figure_output(index, "flow", values(), zoom)
    assert tuple(fig.layout.xaxis.range) == (1, 3) and fig.layout.yaxis.autorange is False
    other, _ = figure_output(index, "flow", values(stat="weight_norm"), zoom)
    assert other.layout.xaxis.range is None  # another statistic: a fresh view
    reset = zoom_output("flow", values(), zoom, {"xaxis.autorange": True})
    assert reset["ranges"] == {"yaxis": [-2, 0]}


# ----- a bad file costs only its own part of the page ------------------------------------------


@pytest.fixture
def folder_with_cut_runs(tmp_path, cut_live_runs):
    """A good run beside copies of a live run cut short (some open, then fail to read)."""
    root = tmp_path / "runs"
    write_run(root / "good" / "resnet.h5")
    for cut in cut_live_runs:
        (root / "bad").mkdir(parents=True, exist_ok=True)
        (root / "bad" / cut.name).write_bytes(cut.read_bytes())
    return root


def test_page_passes_over_a_half_copied_run_and_lists_it_as_bad(tmp_path, cut_live_runs):
    # The newest file is a copy of a live run cut at 50%: it opens and lists its records, but
    # most are not in the file. The page selects the two newest runs that can be read.
    write_run(tmp_path / "exp" / "old.h5", mtime=1_000_000)
    write_run(tmp_path / "exp" / "good.h5", mtime=2_000_000)
    half = tmp_path / "copy" / "half.h5"
    half.parent.mkdir()
    half.write_bytes(next(c for c in cut_live_runs if c.name == "cut0.5.h5").read_bytes())
    with open_run(half) as run:  # what the page could not tell before: it opens
        assert len(run.steps) == 40
    index = RunIndex(tmp_path)
    try:
        entries = {e.rel: e for e in index.scan()}
        assert entries["copy/half.h5"].error.startswith("cannot read the records (truncated")
        layout = page(index, "runs")
        assert find(layout, ids.RUNS).value == ["exp/good.h5", "exp/old.h5"]
        listing = text_of(find(layout, ids.RUN_LIST))
        assert "half.h5 cannot read the records (truncated" in listing and "error" in listing
        (half_option,) = [o for o in find(layout, ids.RUNS).options if o["value"] == "copy/half.h5"]
        assert half_option["disabled"]
    finally:
        index.close()


def test_each_cut_run_is_its_own_error_beside_a_good_run(folder_with_cut_runs):
    index = RunIndex(folder_with_cut_runs)
    try:
        entries = {e.rel: e for e in index.scan()}
        assert entries["good/resnet.h5"].error is None
        for rel in (r for r in entries if r.startswith("bad/")):
            chosen = values(runs=["good/resnet.h5", rel])
            for kind in ids.PANELS:
                fig, message = figure_output(index, kind, chosen)
                if kind == "ratio":  # needs both runs: it says why it cannot draw
                    assert message, rel
                    continue
                drawn = json.dumps(fig.to_plotly_json(), default=str)
                assert fig.data and "good/resnet" in drawn, (kind, rel)
                # the cut run is drawn where what the panel reads is intact, else named
                assert rel in message or rel.removesuffix(".h5") in drawn, (kind, rel, message)
            blocks = diagnosis_output(index, chosen["runs"])
            text = " ".join(str(getattr(b, "children", "")) for b in blocks)
            assert "diagnosis of good/resnet" in text and rel.removesuffix(".h5") in text
            controls = control_values(index, chosen["runs"], "grad_norm", None, None)
            assert "grad_norm" in controls["stat_options"]
            try:
                open_run(folder_with_cut_runs / rel).close()
            except RunFileError:  # cannot even be opened: the controls say so
                assert rel in controls["message"]
    finally:
        index.close()


def test_a_run_held_by_a_slow_request_delays_only_the_requests_that_read_it(index, monkeypatch):
    # No lock is held across file reads but the run's own: while one request is stuck reading
    # a run, requests for other runs go on, and those that need it give up after a while.
    monkeypatch.setattr("gradscope.app.run_index.READ_WAIT_SECONDS", 0.2)
    stuck = index._acquire("baseline/relu.h5")  # as a request in the middle of a read
    try:
        fig, message = figure_output(index, "flow", values(runs=["sweep/lr01.h5"], lines="all"))
        assert message == "" and len(fig.data) == 1
        fig, message = figure_output(
            index, "flow", values(runs=["sweep/lr01.h5", "baseline/relu.h5"], lines="all")
        )
        assert len(fig.data) == 1 and "baseline/relu.h5" in message and "reading" in message
    finally:
        stuck.lock.release()
    both = values(runs=["sweep/lr01.h5", "baseline/relu.h5"], lines="all")
    fig, message = figure_output(index, "flow", both)
    assert len(fig.data) == 2 and message == ""


def test_a_statistic_with_no_finite_value_says_so_in_its_panel(tmp_path):
    (tmp_path / "r").mkdir()
    layers = [{"name": f"layer{i}", "type": "Conv2d", "params": 9} for i in range(5)]
    with RunWriter(tmp_path / "r" / "nan.h5", layers, ["grad_norm", "act_mean"]) as writer:
        for step in range(3):
            writer.append(step, np.stack([np.ones(5), np.full(5, np.nan)]).astype(np.float32))
    index = RunIndex(tmp_path / "r")
    try:
        for kind in ("flow", "heatmap"):
            chosen = values(runs=["nan.h5"], stat="act_mean")
            _, text = figure_output(index, kind, chosen)
            assert "r/nan has no finite act_mean value" in text, (kind, text)
    finally:
        index.close()


def test_cli_dashboard_on_a_busy_port_or_foreign_host_exits_2_with_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli_main(["dashboard", "--runs", str(tmp_path), "--port", str(port)])
    err = capsys.readouterr()
    assert code == 2 and err.out == "" and err.err.count("\n") == 1
    assert f"port {port} on 127.0.0.1 is in use" in err.err
    code = cli_main(["dashboard", "--runs", str(tmp_path), "--host", "192.0.2.1"])  # TEST-NET-1
    err = capsys.readouterr()
    assert code == 2 and err.out == "" and "not an address of this machine" in err.err


# ----- the worked example's pair: names, colours, search, live comparison, offline page -----


@pytest.fixture
def twin_index(tmp_path):
    """A runs folder with a finished resnet56 and a plain56 still being written (15 of 29)."""
    from tests.run_files import write_twin

    write_twin(tmp_path / "worked" / "resnet56.h5", "resnet56", records=29)
    writer = write_twin(tmp_path / "worked" / "plain56.h5", "plain56", records=15, close=False)
    deadline = time.monotonic() + 20
    while True:  # until the live writer flushed its records
        with open_run(tmp_path / "worked" / "plain56.h5") as live:
            if len(live.steps) == 15:
                break
        assert time.monotonic() < deadline, "the live writer did not flush"
        time.sleep(0.05)
    idx = RunIndex(tmp_path)
    yield idx
    idx.close()
    writer.close()


TWINS = ["worked/resnet56.h5", "worked/plain56.h5"]


def test_runs_are_listed_by_model_and_keep_one_colour(twin_index):
    entries = {e.rel: e for e in twin_index.scan()}
    assert entries["worked/resnet56.h5"].model == "resnet56"  # not "CifarResNet"
    assert entries["worked/plain56.h5"].is_live
    colours = twin_index.colours()
    assert set(colours) == {"worked/resnet56", "worked/plain56"}
    assert len(set(colours.values())) == 2
    assert RunIndex(twin_index.root).colours() == colours  # the same after a reload
    table, options, _ = refresh_run_list(twin_index, "runs", TWINS, {})
    swatches = {o["value"]: o["label"].children[0].style["backgroundColor"] for o in options}
    assert swatches == {
        "worked/resnet56.h5": colours["worked/resnet56"],
        "worked/plain56.h5": colours["worked/plain56"],
    }
    for kind in ("flow", "training"):  # the panels draw each run in its own colour
        fig, _ = figure_output(twin_index, kind, values(runs=TWINS[::-1]))
        drawn = {t.legendgroup: t.line.color for t in fig.data}
        assert drawn == colours, kind
    text = text_of(table)
    assert "resnet56 worked 29 complete" in text and "plain56 worked 15 live" in text


def test_run_table_search(twin_index):
    table, _, _ = refresh_run_list(twin_index, "runs", [], {}, search="plain")
    text = text_of(table)
    assert "plain56" in text and "resnet56" not in text and "1 of 2 runs" in text
    table, _, _ = refresh_run_list(twin_index, "runs", [], {}, search="worked resnet")
    assert "resnet56" in text_of(table) and "plain56 worked" not in text_of(table)


def test_latest_means_the_latest_step_every_selected_run_has(twin_index):
    label = step_label(twin_index, TWINS, None, None)
    assert label == (
        "step 14: the latest step all selected runs have "
        "(worked/resnet56 at 28, worked/plain56 at 14)"
    )
    fig, message = figure_output(twin_index, "flow", values(runs=TWINS))
    assert message == ""
    titles = {t.legendgroup: t.legendgrouptitle.text for t in fig.data}
    assert titles["worked/resnet56"] == "worked/resnet56 (step 14; latest 28)"


def test_default_panels_of_the_pair_draw_without_error(twin_index):
    for kind in ids.PANELS:
        fig, message = figure_output(twin_index, kind, values(runs=TWINS))
        assert message == "" and fig.data, kind
    ratio, _ = figure_output(twin_index, "ratio", values(runs=TWINS))
    assert "4 only in worked/resnet56 left out" in ratio.layout.title.text
    heat, message = figure_output(twin_index, "heatmap", values(runs=TWINS, stat="act_mean"))
    assert "worked/plain56 has no finite act_mean value" in message
    assert "worked/resnet56 has no finite act_mean value" in message


def test_the_page_needs_nothing_from_a_cdn(twin_index):
    server = create_app(twin_index.root).server.test_client()
    html_page = server.get("/").get_data(as_text=True)
    assert "bootstrap.min.css" in html_page
    assert "https://" not in html_page and "http://" not in html_page
    css = server.get("/_gradscope/css/bootstrap.min.css")
    assert css.status_code == 200 and b"Bootstrap" in css.data[:200]
