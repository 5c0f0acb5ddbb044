"""The dashboard's probe view without a browser: probe files listed apart, panels, diagnosis."""

import pytest
from gradscope.app import create_app, ids
from gradscope.app.callbacks import diagnosis_output
from gradscope.app.layout import newest_runs, page, run_options, run_table
from gradscope.app.probe_view import (
    BROCK,
    ProbeControls,
    default_probes,
    probe_control_values,
    probe_figure,
    probe_options,
    probe_table,
)
from gradscope.app.run_index import RunIndex

from gradscope.errors import UsageError
from tests.test_app_callbacks import find, text_of

PAIR = ["probes/plain20.h5", "probes/resnet20.h5"]
SWEEP = "sweep/sp_mlp.h5"


@pytest.fixture
def index(probe_runs):
    idx = RunIndex(probe_runs)
    yield idx
    idx.close()


def test_probe_files_are_listed_apart_from_training_runs(index):
    entries = index.scan()
    probes = {e.rel: e for e in entries if e.probe}
    assert set(probes) == {*PAIR, SWEEP}
    assert probes[SWEEP].widths == (32, 64, 128) and probes[PAIR[0]].widths == ()
    assert newest_runs(entries) == ["demo/resnet56.h5"]  # probes are never preselected as runs
    assert [o["value"] for o in run_options(entries, {})] == ["demo/resnet56.h5"]
    assert "plain20" not in text_of(run_table(entries, "runs", {}))
    listed = text_of(probe_table(entries, "runs", {}))
    assert "plain20" in listed and "widths 32, 64, 128" in listed and "3 probe files" in listed
    assert [o["value"] for o in probe_options(entries, {})] == sorted(probes)
    newest = max((e for e in entries if e.probe), key=lambda e: e.mtime)
    assert set(default_probes(entries)) == {e.rel for e in entries if e.folder == newest.folder}
    layout = page(index, "runs")
    assert find(layout, ids.PROBE_RUNS) is not None and find(layout, ids.PROBE_LIST) is not None


def test_probe_panels_draw_the_figures_and_say_what_they_cannot(index):
    fig, message = probe_figure(index, "spp", {"probes": PAIR})
    assert {t.name for t in fig.data} == {"probes/resnet20", "probes/plain20"}
    assert message == "" and fig.layout.uirevision.startswith("spp:")
    fig, message = probe_figure(index, "widths", {"probes": [*PAIR, SWEEP], "width_step": 0})
    assert "at initialization" in fig.layout.title.text and len(fig.data) == 5
    fig, message = probe_figure(index, "widths", {"probes": PAIR})
    assert "none of the probes shown is a width sweep" in message
    _, message = probe_figure(index, "spp", {"probes": ["../outside.h5"]})
    assert "outside the runs folder" in message
    with pytest.raises(UsageError):
        ProbeControls.from_request(probes=PAIR, spp_layers="some")


def test_probe_controls_follow_the_selected_probes(index):
    values = probe_control_values(index, [*PAIR, SWEEP], "chan_var", None, 7)
    assert values["spp_stat"] == "chan_var"
    assert values["spp_options"][0]["value"] == BROCK
    assert values["width_stat"] == "act_abs_mean" and values["width_step"] == 2
    assert [o["value"] for o in values["step_options"]] == [0, 1, 2]
    assert probe_control_values(index, PAIR, None, None, None)["step_options"] == []


def test_probe_diagnosis_and_the_page_of_the_app(index, probe_runs):
    text = text_of(diagnosis_output(index, PAIR))
    assert "diagnosis at initialization of probes/resnet20" in text
    app = create_app(probe_runs)
    outputs = " ".join(app.callback_map)
    assert ids.PROBE_DIAGNOSIS in outputs and "probe_panel" in outputs
