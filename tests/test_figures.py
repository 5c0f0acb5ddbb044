"""Tests of gradscope.figures and gradscope.figures._layer_filter on small synthetic run files."""

import numpy as np
import pytest

import gradscope
from gradscope import figures
from gradscope.errors import UsageError
from gradscope.figures._heatmap import LABEL_PX, MARGIN_PX
from gradscope.figures._layer_filter import select_layers
from gradscope.store import RunWriter
from tests.run_files import write_twin


def write_run(path, stats, steps=None, types=None, metrics=None, names=None, attrs=None):
    """Write a run file: `stats` maps a name to values [records, layers]; returns the open run."""
    first = next(iter(stats.values()))
    records, n_layers = first.shape
    steps = np.arange(records) * 10 if steps is None else np.asarray(steps)
    types = types or ["Conv2d" if j % 2 == 0 else "BatchNorm2d" for j in range(n_layers)]
    names = names or [f"block{j}.{types[j].lower()}" for j in range(n_layers)]
    layers = [{"name": names[j], "type": types[j], "params": 100} for j in range(n_layers)]
    attrs = {"synthetic": True} if attrs is None else attrs
    with RunWriter(path, layers=layers, stats=list(stats), attrs=attrs) as w:
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
    assert figures.run_model(run) == "a"  # neither a model name nor a class: the file stem


def test_runs_are_named_by_the_model_record_stores(tmp_path):
    write_twin(tmp_path / "worked" / "resnet56.h5", "resnet56", records=2)
    write_twin(tmp_path / "exp" / "lr01.h5", "plain56", records=2)
    ones = {"grad_norm": np.ones((1, 2), np.float32)}
    with (
        gradscope.open_run(tmp_path / "worked" / "resnet56.h5") as resnet,
        gradscope.open_run(tmp_path / "exp" / "lr01.h5") as renamed,
        write_run(tmp_path / "mine.h5", ones, attrs={"model_class": "MyNet"}) as attached,
    ):
        assert (figures.run_label(resnet), figures.run_model(resnet)) == (
            "worked/resnet56",
            "resnet56",
        )
        assert figures.run_label(renamed) == "exp/lr01 (plain56)"
        assert figures.run_model(attached) == "MyNet"  # a class name only when nothing better


def test_flow_curve_latest_record_and_hover(run):
    fig = figures.flow_curve([run], "grad_norm", lines="all")
    (trace,) = fig.data
    np.testing.assert_allclose(trace.y, 20 * 10.0 ** -np.arange(6), rtol=1e-6)
    assert list(trace.x) == list(range(6))
    assert trace.customdata[3][0] == "block3.batchnorm2d"
    assert "step 190" in trace.name
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.title.text.startswith("Gradient norm across depth")  # in words
    assert fig.layout.yaxis.title.text == "grad_norm" and fig.layout.yaxis.dtick == 1
    assert fig.layout.uirevision


def test_flow_curve_step_snaps_to_the_nearest_record_and_says_so(run):
    fig = figures.flow_curve(run, "grad_norm", step=55, lines="all")  # 50 and 60 tie: 50
    assert fig.data[0].y[0] == pytest.approx(6.0)
    assert "nearest record to step 55 (step 50)" in fig.layout.title.text
    fig = figures.flow_curve(run, "grad_norm", step=57, lines="all")
    assert fig.data[0].y[0] == pytest.approx(7.0) and "step 60" in fig.data[0].name
    assert "nearest record to step 57 (step 60)" in fig.layout.title.text
    fig = figures.flow_curve(run, "grad_norm", step=60)
    assert fig.layout.title.text.endswith("step 60") and "nearest" not in fig.layout.title.text


def test_flow_curve_window_mean_and_normalized_depth(run):
    fig = figures.flow_curve(
        run, "grad_norm", window=(20, 50), depth_axis="normalized", lines="all"
    )
    assert fig.data[0].y[0] == pytest.approx(np.mean([3, 4, 5]))  # steps 20, 30, 40
    assert fig.data[0].x[0] == 0.0 and fig.data[0].x[-1] == 1.0


def test_flow_curve_window_mean_across_read_chunks(run, monkeypatch):
    monkeypatch.setattr("gradscope.figures._flow.WINDOW_CHUNK_RECORDS", 3)
    fig = figures.flow_curve(run, "grad_norm", window=(0, 200), lines="all")
    assert fig.data[0].y[0] == pytest.approx(np.mean(np.arange(1, 21)))


def test_flow_curve_filters_layers(run):
    fig = figures.flow_curve(run, "grad_norm", types=["Conv2d"])
    assert list(fig.data[0].x) == [0, 2, 4]
    assert len(fig.data) == 1 and fig.data[0].name == "Conv2d (3)"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step": 1000}, "beyond the runs"),
        ({"step": -5}, "before the first record"),
        ({"window": (500, 600)}, "no record"),
        ({"window": (50, 20)}, "below its stop"),
        ({"depth_axis": "layers"}, "depth_axis"),
        ({"lines": "zigzag"}, "lines"),
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
        y = figures.flow_curve(run, "grad_norm", lines="all").data[0].y
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
    colourbar = fig.layout.coloraxis.colorbar
    assert list(colourbar.tickvals) == [-5, -4, -3, -2, -1, 0, 1, 2, 3, 4]  # decades only
    assert colourbar.ticktext[0] == "10<sup>-5</sup>"
    assert list(first.y)[0] == "block0.conv2d" and fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.yaxis2.matches == "y" and fig.layout.yaxis2.showticklabels is False
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


def test_ratio_heatmap_needs_a_shared_layer_name(run, tmp_path):
    ones = {"grad_norm": np.ones((3, 2), np.float32)}
    with write_run(tmp_path / "other.h5", ones, names=["stem", "head"]) as other:
        with pytest.raises(UsageError, match="no layer name in common"):
            figures.ratio_heatmap(run, other, "grad_norm")


def curves_by_series(fig) -> dict:
    """{series name: trace} of the hoverable (not the faint raw) traces of training_curves."""
    return {
        trace.hovertemplate.split("<br>")[1].split(" = ")[0]: trace
        for trace in fig.data
        if trace.hovertemplate
    }


def test_training_curves_train_and_test_loss_and_error_in_percent(tmp_path):
    metrics = {s: {"loss": 1.0 / (s + 1), "error": 0.5} for s in range(0, 100, 10)}
    metrics[50].update(test_error=0.4, test_loss=0.9)
    metrics[90].update(test_error=0.3, test_loss=0.7)
    grad = np.ones((2, 2), np.float32)
    with write_run(tmp_path / "c.h5", {"grad_norm": grad}, metrics=metrics) as run:
        fig = figures.training_curves([run], smoothing=0)
    series = curves_by_series(fig)
    assert set(series) == {"train loss", "test loss", "train error", "test error"}
    assert series["test error"].line.width > series["train error"].line.width
    assert list(series["test error"].x) == [50, 90]
    assert list(series["test error"].y) == pytest.approx([40.0, 30.0])  # fractions in %
    assert list(series["train error"].y) == pytest.approx([50.0] * 10)
    assert list(series["test loss"].y) == pytest.approx([0.9, 0.7])
    assert fig.layout.yaxis2.title.text == "error (%)"
    assert sum(trace.showlegend for trace in fig.data) == 1  # one legend entry per run
    assert not fig.layout.annotations[2:]  # only the two subplot titles


def test_training_curves_smoothing_is_tensorboards_debiased_ema(tmp_path):
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 2.5, 40)
    metrics = {s: {"loss": float(v)} for s, v in enumerate(losses)}
    with write_run(
        tmp_path / "s.h5", {"grad_norm": np.ones((1, 1), np.float32)}, metrics=metrics
    ) as run:
        fig = figures.training_curves(run, smoothing=0.8)
    expected, last = [], 0.0
    for i, value in enumerate(losses):  # TensorBoard's smoothing, written out
        last = last * 0.8 + (1 - 0.8) * value
        expected.append(last / (1 - 0.8 ** (i + 1)))
    smoothed = curves_by_series(fig)["train loss"]
    np.testing.assert_allclose(smoothed.y, expected, rtol=1e-9)
    raw = [t for t in fig.data if not t.hovertemplate]
    assert len(raw) == 1 and raw[0].opacity < 1
    np.testing.assert_allclose(raw[0].y, losses)
    with pytest.raises(UsageError, match="smoothing"):
        figures.training_curves(run, smoothing=1.0)


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
        fig = figures.training_curves(run, max_points=100, smoothing=0)
    assert len(fig.data[0].y) == 100
    np.testing.assert_allclose(fig.data[0].y, 0.5)


# ----- runs of different layer sets: the bundled ResNet and its plain twin -----


@pytest.fixture
def twins(tmp_path):
    """A tiny resnet/plain pair named as the bundled nets (17 and 13 layers), 10 records."""
    write_twin(tmp_path / "worked" / "resnet56.h5", "resnet56")
    write_twin(tmp_path / "worked" / "plain56.h5", "plain56")
    with (
        gradscope.open_run(tmp_path / "worked" / "resnet56.h5") as resnet,
        gradscope.open_run(tmp_path / "worked" / "plain56.h5") as plain,
    ):
        yield resnet, plain


def trace_xy_by_name(trace) -> dict:
    """{layer name: (x, y)} of a flow trace."""
    return {c[0]: (x, y) for c, x, y in zip(trace.customdata, trace.x, trace.y, strict=True)}


def test_flow_curve_aligns_runs_by_layer_name(twins):
    resnet, plain = twins
    assert len(resnet.layers) == len(plain.layers) + 4  # two downsample conv + bn
    fig = figures.flow_curve([resnet, plain], "grad_norm", lines="all")
    at = [trace_xy_by_name(trace) for trace in fig.data]
    for name in ("layer3.0.conv1", "layer3.0.bn2", "fc"):  # after the extra layers: no drift
        assert at[0][name][0] == at[1][name][0]
    assert "aligned by layer name" in fig.layout.xaxis.title.text
    drift = figures.flow_curve([resnet, plain], "grad_norm", lines="all", depth_axis="index")
    at = [trace_xy_by_name(trace) for trace in drift.data]
    assert at[0]["fc"][0] - at[1]["fc"][0] == 4  # own index: the twin drifts by 4 layers


def test_flow_curve_draws_one_line_per_run_and_layer_type(twins):
    resnet, plain = twins
    fig = figures.flow_curve([resnet, plain], "grad_norm")
    lines = {(t.legendgroup, t.name): t for t in fig.data}
    assert set(lines) == {
        ("worked/resnet56", "Conv2d (9)"),
        ("worked/resnet56", "BatchNorm2d (9)"),
        ("worked/resnet56", "Linear (1)"),
        ("worked/plain56", "Conv2d (7)"),
        ("worked/plain56", "BatchNorm2d (7)"),
        ("worked/plain56", "Linear (1)"),
    }
    conv = lines[("worked/resnet56", "Conv2d (9)")]
    bn = lines[("worked/resnet56", "BatchNorm2d (9)")]
    assert (conv.line.dash, bn.line.dash) == ("solid", "dot")
    assert lines[("worked/resnet56", "Linear (1)")].mode == "markers"
    # one line per type does not zig-zag: the ResNet's conv values are all equal (1.0)
    np.testing.assert_allclose(conv.y, 1.0)
    np.testing.assert_allclose(bn.y, 0.1, rtol=1e-6)
    assert conv.line.color == bn.line.color != lines[("worked/plain56", "Conv2d (7)")].line.color
    assert "resnet56" in conv.legendgrouptitle.text


def test_flow_latest_is_the_latest_step_every_run_has(tmp_path):
    write_twin(tmp_path / "live" / "resnet56.h5", "resnet56", records=29)
    write_twin(tmp_path / "live" / "plain56.h5", "plain56", records=15)
    with (
        gradscope.open_run(tmp_path / "live" / "resnet56.h5") as resnet,
        gradscope.open_run(tmp_path / "live" / "plain56.h5") as plain,
    ):
        fig = figures.flow_curve([resnet, plain], "grad_norm")
        assert figures.latest_common_step([resnet, plain]) == 14
    titles = {t.legendgroup: t.legendgrouptitle.text for t in fig.data}
    assert titles["live/resnet56"] == "live/resnet56 (step 14; latest 28)"
    assert titles["live/plain56"] == "live/plain56 (step 14)"
    assert "latest step all runs have (step 14)" in fig.layout.title.text


def test_ratio_heatmap_uses_the_layers_both_runs_have(twins):
    resnet, plain = twins
    fig = figures.ratio_heatmap(resnet, plain, "grad_norm")
    names = list(fig.data[0].y)
    assert names == [n for n in resnet.layers["name"] if "downsample" not in n]  # depth order
    assert "15 layers both runs have; 4 only in worked/resnet56 left out" in fig.layout.title.text
    a, b = resnet.stat("grad_norm"), plain.stat("grad_norm")  # brute force, by name
    ra, rb = list(resnet.layers["name"]), list(plain.layers["name"])
    j = names.index("layer2.0.conv1")
    expected = np.log10(a[:, ra.index("layer2.0.conv1")] / b[:, rb.index("layer2.0.conv1")])
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float)[j], expected, rtol=1e-5)
    convs = figures.ratio_heatmap(resnet, plain, "grad_norm", types=["Conv2d"])
    assert "7 layers both runs have; 2 only in worked/resnet56" in convs.layout.title.text


def test_heatmap_rows_matched_by_name_with_blank_rows_for_missing_layers(twins):
    resnet, plain = twins
    fig = figures.depth_step_heatmap([resnet, plain], "grad_norm")
    rows = list(fig.data[0].y)
    assert rows == list(fig.data[1].y) == list(resnet.layers["name"])
    z_plain = np.asarray(fig.data[1].z, dtype=float)
    missing = [i for i, name in enumerate(rows) if "downsample" in name]
    assert np.isnan(z_plain[missing]).all()
    j = rows.index("fc")
    np.testing.assert_allclose(z_plain[j], np.log10(plain.stat("grad_norm")[:, -1]), rtol=1e-5)
    assert fig.layout.yaxis2.matches == "y"  # one set of row labels, on the left


def test_heatmap_height_grows_with_layers_and_labels_never_overlap(tmp_path):
    heights = {}
    for n in (6, 115, 600):
        values = np.ones((4, n), np.float32)
        with write_run(tmp_path / f"n{n}.h5", {"grad_norm": values}) as run:
            fig = figures.depth_step_heatmap(run, "grad_norm")
        heights[n] = fig.layout.height
        plot = fig.layout.height - MARGIN_PX["t"] - MARGIN_PX["b"]
        labelled = len(fig.layout.yaxis.tickvals)
        assert plot / labelled >= LABEL_PX * 0.99, n  # each label has room
        assert labelled >= min(n, plot // (2 * LABEL_PX)), n  # and most rows are named
    assert heights[6] < heights[115] < heights[600]


def cifar_resnet_names(blocks_per_stage: int) -> list[str]:
    """The layer names of the bundled CIFAR ResNet-(6n+2), n = blocks_per_stage, in depth order."""
    names = ["conv1", "bn1"]
    for stage in (1, 2, 3):
        for block in range(blocks_per_stage):
            prefix = f"layer{stage}.{block}"
            names += [f"{prefix}.{part}" for part in ("conv1", "bn1", "conv2", "bn2")]
            if stage > 1 and block == 0:
                names += [f"{prefix}.downsample.0", f"{prefix}.downsample.1"]
    return names + ["fc"]


def labelled_rows(axis, names):
    return [names.index(name) for name in axis.tickvals]


def test_heatmap_rows_are_all_labelled_where_they_fit_else_at_block_starts(tmp_path):
    from gradscope.models import create_model

    model = create_model("resnet56")
    owning = [n for n, m in model.named_modules() if any(True for _ in m.parameters(False))]
    assert cifar_resnet_names(9) == owning  # ResNet-56's 115 layers
    cases = {"fits": (cifar_resnet_names(1), None), "resnet56": (owning, None)}
    cases["tall"] = (owning, 115 * LABEL_PX + MARGIN_PX["t"] + MARGIN_PX["b"])
    cases["short"] = (cifar_resnet_names(18), 400)  # ResNet-110's 221 rows in a 240 px plot
    axes = {}
    for case, (names, height) in cases.items():
        values = np.ones((3, len(names)), np.float32)
        with write_run(tmp_path / f"{case}.h5", {"grad_norm": values}, names=names) as run:
            fig = figures.depth_step_heatmap(run, "grad_norm", height=height)
            ratio = figures.ratio_heatmap(run, run, "grad_norm", height=height)
        assert ratio.layout.yaxis.tickvals == fig.layout.yaxis.tickvals, case
        assert ratio.layout.yaxis.title.text == fig.layout.yaxis.title.text, case
        axes[case] = fig.layout.yaxis
        rows = labelled_rows(fig.layout.yaxis, names)
        row_px = (fig.layout.height - MARGIN_PX["t"] - MARGIN_PX["b"]) / len(names)
        assert min(np.diff(rows), default=len(names)) * row_px >= LABEL_PX, case  # no overlap
    for case in ("fits", "tall"):  # every row, BatchNorm too: no note needed
        assert list(axes[case].tickvals) == cases[case][0]
        assert axes[case].title.text == "layer (input at top)"
    blocks = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(9)]
    assert list(axes["resnet56"].tickvals) == ["conv1", *blocks, "fc"]  # each block's start
    # too many blocks: each stage's start (conv1 and bn1 are within a label's height of it)
    stages = ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "fc"]
    assert list(axes["short"].tickvals) == stages
    for case in ("resnet56", "short"):
        title = axes[case].title.text
        assert title == "layer (input at top): block starts labelled, hover names each row"
    flat = [f"{i}" for i in range(300)]  # nn.Sequential: no blocks, every k-th row
    with write_run(
        tmp_path / "flat.h5", {"grad_norm": np.ones((2, 300), np.float32)}, names=flat
    ) as run:
        axis = figures.depth_step_heatmap(run, "grad_norm").layout.yaxis
    assert (
        list(axis.tickvals) == flat[:: int(flat[1]) + 1]
        and "every 2nd row labelled" in axis.title.text
    )


def test_a_run_with_no_finite_value_says_so_in_its_panel(twins, tmp_path):
    resnet, plain = twins  # their act_mean is NaN everywhere, as in the runs
    finite = {"act_mean": np.ones((3, 4), np.float32)}
    with write_run(tmp_path / "ok.h5", finite) as good:
        fig = figures.depth_step_heatmap([good, resnet], "act_mean")
        flow = figures.flow_curve([good, resnet], "act_mean")
    sentence = (
        "worked/resnet56 has no finite act_mean value at any layer or record (all NaN or inf)"
    )
    assert fig.layout.meta["notes"] == [sentence]
    in_panel = [a for a in fig.layout.annotations if "has no finite" in a.text]
    assert len(in_panel) == 1 and in_panel[0].x > 0.5  # in the second panel
    assert {t.legendgroup for t in flow.data} == {f"{tmp_path.name}/ok"}
    assert "worked/resnet56 has no finite act_mean value at step 9" in flow.layout.meta["notes"][0]
    for build in (figures.depth_step_heatmap, figures.flow_curve):
        with pytest.raises(UsageError, match="worked/plain56 has no finite act_mean value"):
            build([resnet, plain], "act_mean")


def test_colours_follow_the_run_not_its_position(twins, tmp_path):
    resnet, plain = twins
    ab = figures.run_colours([resnet, plain])
    assert figures.run_colours([plain, resnet]) == ab[::-1]  # the same colour in any order
    assert ab[0] != ab[1]
    flow = figures.flow_curve([plain, resnet], "grad_norm")
    curves = figures.training_curves([resnet, plain])
    heat = figures.depth_step_heatmap([resnet, plain], "grad_norm")
    by_run = {t.legendgroup: t.line.color for t in flow.data}
    assert by_run == {"worked/resnet56": ab[0], "worked/plain56": ab[1]}
    assert {t.legendgroup: t.line.color for t in curves.data} == by_run
    assert ab[0] in heat.layout.annotations[0].text and ab[1] in heat.layout.annotations[1].text
    given = figures.run_colours([resnet, plain], colours={"worked/plain56": "#123456"})
    assert given[1] == "#123456" and given[0] != "#123456"


def test_assign_colours_is_stable_and_keeps_colours_apart():
    labels = [f"exp{i}/resnet56" for i in range(12)]
    colours = figures.assign_colours(labels)
    assert len(set(colours.values())) == 12  # no two runs share one (12 < 14 colours)
    assert figures.assign_colours(labels) == colours  # stable across page loads
    grown = figures.assign_colours([*labels, "exp99/plain56"])  # a new run joins
    assert all(grown[label] == colours[label] for label in labels)
    assert set(colours.values()) <= set(figures.PALETTE)
    # up to eight runs never get two colours alike: all from D3's eight distinct hues
    assert set(figures.assign_colours(labels[:8]).values()) == set(figures.PALETTE[:8])
    pair = figures.assign_colours(["gallery-400/plain56", "gallery-400/resnet56"])
    assert len(set(pair.values())) == 2 and set(pair.values()) <= set(figures.PALETTE[:8])
