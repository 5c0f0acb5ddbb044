"""Tests of gradscope.figures and gradscope.figures._layer_filter on small synthetic run files."""

import numpy as np
import pytest

import gradscope
from gradscope import figures
from gradscope.errors import UsageError
from gradscope.figures._layer_filter import select_layers
from gradscope.store import RunWriter


def write_run(path, stats, steps=None, types=None, metrics=None):
    """Write a run file: `stats` maps a name to values [records, layers]; returns the open run."""
    first = next(iter(stats.values()))
    records, n_layers = first.shape
    steps = np.arange(records) * 10 if steps is None else np.asarray(steps)
    types = types or ["Conv2d" if j % 2 == 0 else "BatchNorm2d" for j in range(n_layers)]
    layers = [
        {"name": f"block{j}.{types[j].lower()}", "type": types[j], "params": 100}
        for j in range(n_layers)
    ]
    with RunWriter(path, layers=layers, stats=list(stats), attrs={"synthetic": True}) as w:
        for i, step in enumerate(steps):
            w.append(int(step), np.stack([v[i] for v in stats.values()]).astype(np.float32))
        for step, row in (metrics or {}).items():
            w.log(step, row)
    return gradscope.open_run(path)


@pytest.fixture
def run(tmp_path):
    """6 layers x 20 records (steps 0..190); grad_norm[i, j] = (i + 1) * 10**-j."""
    values = (np.arange(1, 21)[:, None] * 10.0 ** -np.arange(6)[None, :]).astype(np.float32)
    opened = write_run(tmp_path / "a.h5", {"grad_norm": values, "act_std": values * 2})
    yield opened
    opened.close()


def test_select_layers_by_type_and_pattern(run):
    assert select_layers(run.layers, types=["Conv2d"]).tolist() == [0, 2, 4]
    assert select_layers(run.layers, pattern="block[12].*").tolist() == [1, 2]
    assert select_layers(run.layers, types=["Conv2d"], pattern="block[12].*").tolist() == [2]
    with pytest.raises(UsageError, match="BatchNorm2d, Conv2d"):
        select_layers(run.layers, types=["Linear"])


def test_run_label_is_folder_and_stem(run, tmp_path):
    assert figures.run_label(run) == f"{tmp_path.name}/a"


def test_flow_curve_latest_record_and_hover(run):
    fig = figures.flow_curve([run], "grad_norm")
    (trace,) = fig.data
    np.testing.assert_allclose(trace.y, 20 * 10.0 ** -np.arange(6), rtol=1e-6)
    assert list(trace.x) == list(range(6))
    assert trace.customdata[3][0] == "block3.batchnorm2d"
    assert "step 190" in trace.name
    assert fig.layout.yaxis.type == "log"
    assert "grad_norm" in fig.layout.title.text
    assert fig.layout.uirevision


def test_flow_curve_step_snaps_to_the_nearest_record_and_says_so(run):
    fig = figures.flow_curve(run, "grad_norm", step=55)  # records at 50 and 60: a tie, uses 50
    assert fig.data[0].y[0] == pytest.approx(6.0)
    assert "nearest record to step 55 (step 50)" in fig.layout.title.text
    fig = figures.flow_curve(run, "grad_norm", step=57)
    assert fig.data[0].y[0] == pytest.approx(7.0) and "step 60" in fig.data[0].name
    assert "nearest record to step 57 (step 60)" in fig.layout.title.text
    fig = figures.flow_curve(run, "grad_norm", step=60)
    assert fig.layout.title.text.endswith("step 60") and "nearest" not in fig.layout.title.text


def test_flow_curve_window_mean_and_normalized_depth(run):
    fig = figures.flow_curve(run, "grad_norm", window=(20, 50), depth_axis="normalized")
    assert fig.data[0].y[0] == pytest.approx(np.mean([3, 4, 5]))  # steps 20, 30, 40
    assert fig.data[0].x[0] == 0.0 and fig.data[0].x[-1] == 1.0


def test_flow_curve_window_mean_across_read_chunks(run, monkeypatch):
    monkeypatch.setattr("gradscope.figures._flow.WINDOW_CHUNK_RECORDS", 3)
    fig = figures.flow_curve(run, "grad_norm", window=(0, 200))
    assert fig.data[0].y[0] == pytest.approx(np.mean(np.arange(1, 21)))


def test_flow_curve_filters_layers(run):
    fig = figures.flow_curve(run, "grad_norm", types=["Conv2d"])
    assert list(fig.data[0].x) == [0, 2, 4]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step": 1000}, "beyond the runs"),
        ({"step": -5}, "before the first record"),
        ({"window": (500, 600)}, "no record"),
        ({"window": (50, 20)}, "below its stop"),
        ({"depth_axis": "layers"}, "depth_axis"),
    ],
)
def test_flow_curve_bad_input(run, kwargs, message):
    with pytest.raises(UsageError, match=message):
        figures.flow_curve(run, "grad_norm", **kwargs)


def test_missing_stat_names_what_the_file_has(run):
    with pytest.raises(UsageError, match="act_zero_frac.*grad_norm, act_std"):
        figures.depth_step_heatmap(run, "act_zero_frac")


def test_flow_curve_masks_values_a_log_axis_cannot_show(tmp_path):
    values = np.array([[1.0, 0.0, np.inf, np.nan, 2.0]], dtype=np.float32)
    with write_run(tmp_path / "m.h5", {"grad_norm": values}) as run:
        y = figures.flow_curve(run, "grad_norm").data[0].y
    assert y[0] == 1.0 and y[4] == 2.0 and np.isnan(y[1:4]).all()


def test_heatmap_panels_share_log_colour_scale(run, tmp_path):
    values = np.full((5, 6), 1e4, dtype=np.float32)
    values[2, 1], values[3, 2], values[4, 3] = 0.0, np.inf, np.nan
    with write_run(tmp_path / "b.h5", {"grad_norm": values}) as other:
        fig = figures.depth_step_heatmap([run, other], "grad_norm")
        fig.to_json()  # NaN and inf serialise
    first, second = fig.data
    assert first.coloraxis == second.coloraxis == "coloraxis"
    assert first.xaxis == "x" and second.xaxis == "x2"
    z = np.asarray(first.z)
    assert z.shape == (6, 20)  # layers x records
    assert z[2, 0] == pytest.approx(-2.0)  # log10(1 * 10**-2)
    z2 = np.asarray(second.z, dtype=float)
    assert np.isnan(z2[1, 2]) and np.isnan(z2[2, 3]) and np.isnan(z2[3, 4])
    assert np.asarray(second.customdata)[2, 3] == np.inf  # hover keeps the raw value
    assert fig.layout.coloraxis.cmin == pytest.approx(np.log10(1e-5))
    assert fig.layout.coloraxis.cmax == pytest.approx(4.0)
    assert list(first.y)[0] == "block0.conv2d" and fig.layout.yaxis.autorange == "reversed"
    assert "%{customdata" in first.hovertemplate and first.text is None


def test_heatmap_downsamples_to_max_steps(tmp_path):
    values = np.ones((1000, 3), dtype=np.float32)
    with write_run(tmp_path / "long.h5", {"grad_norm": values}) as run:
        fig = figures.depth_step_heatmap(run, "grad_norm", max_steps=100, log_color=False)
    assert np.asarray(fig.data[0].z).shape == (3, 100)
    assert "1000 records in 100 block means" in fig.layout.annotations[0].text


def test_ratio_heatmap_is_centred_log_ratio(run, tmp_path):
    values = (np.arange(1, 21)[:, None] * 10.0 ** -np.arange(6)[None, :]).astype(np.float32)
    with write_run(tmp_path / "half.h5", {"grad_norm": values / 100}) as other:
        fig = figures.ratio_heatmap(run, other, "grad_norm")
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), 2.0, rtol=1e-5)
    assert fig.layout.coloraxis.cmid == 0.0
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax


def test_ratio_heatmap_needs_same_layers(run, tmp_path):
    with write_run(tmp_path / "small.h5", {"grad_norm": np.ones((3, 4), np.float32)}) as other:
        with pytest.raises(UsageError, match="different layers"):
            figures.ratio_heatmap(run, other, "grad_norm")
        fig = figures.ratio_heatmap(run, other, "grad_norm", pattern="block[0-3].*")
    assert len(fig.data[0].y) == 4


def test_training_curves_thin_train_bold_test(tmp_path):
    metrics = {s: {"loss": 1.0 / (s + 1), "train_error": 0.5} for s in range(0, 100, 10)}
    metrics[50]["test_error"] = 0.4
    metrics[90]["test_error"] = 0.3
    grad = np.ones((2, 2), np.float32)
    with write_run(tmp_path / "c.h5", {"grad_norm": grad}, metrics=metrics) as run:
        fig = figures.training_curves([run])
    by_name = {trace.name.split(" ", 1)[1]: trace for trace in fig.data}
    assert set(by_name) == {"train loss", "train error", "test error"}
    assert by_name["test error"].line.width > by_name["train error"].line.width
    assert list(by_name["test error"].x) == [50, 90]
    assert not fig.layout.annotations[2:]  # only the two subplot titles


def test_training_curves_without_metrics_says_so(run):
    fig = figures.training_curves(run)
    assert not fig.data
    assert any("no training metrics" in a.text for a in fig.layout.annotations)


def test_available_steps_is_sorted_union(run, tmp_path):
    grad = np.ones((3, 6), np.float32)
    with write_run(tmp_path / "d.h5", {"grad_norm": grad}, steps=[5, 10, 500]) as other:
        steps = figures.available_steps([run, other])
    assert steps[:4].tolist() == [0, 5, 10, 20] and steps[-1] == 500
    assert len(steps) == 22


def test_training_curves_block_means_long_series(tmp_path):
    metrics = {s: {"loss": float(s % 2)} for s in range(5000)}
    with write_run(
        tmp_path / "e.h5", {"grad_norm": np.ones((1, 1), np.float32)}, metrics=metrics
    ) as run:
        fig = figures.training_curves(run, max_points=100)
    assert len(fig.data[0].y) == 100
    np.testing.assert_allclose(fig.data[0].y, 0.5)
