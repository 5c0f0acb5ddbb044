"""The probe figures (signal propagation plot, coordinate check) and their PNG export."""

import numpy as np
import pytest

from gradscope import figures
from gradscope.cli import build_parser, export_cmd
from gradscope.cli import main as cli_main
from gradscope.errors import UsageError
from gradscope.export import default_size
from gradscope.store import open_run, probe_info, probe_values, width_exponents


@pytest.fixture
def pair(probe_runs):
    runs = [open_run(probe_runs / "probes" / f"{n}.h5") for n in ("resnet20", "plain20")]
    yield runs
    for run in runs:
        run.close()


@pytest.fixture
def sweep(probe_runs):
    with open_run(probe_runs / "sweep" / "sp_mlp.h5") as run:
        yield run


def traces_of(fig, panel: int):
    axis = "x" if panel == 1 else f"x{panel}"
    return [t for t in fig.data if t.xaxis == axis]


def test_spp_draws_each_models_blocks_and_leaves_out_the_branch_panel_of_a_plain_net(pair):
    resnet, plain = pair
    fig = figures.signal_propagation(pair)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == [figures.stat_words(s) for s in figures.SPP_STATS]
    blocks = probe_info(resnet)["blocks"]
    assert len(blocks) == 9  # resnet20: 3 stages of 3 blocks
    names = list(resnet.layers["name"])
    for panel, stat in enumerate(figures.SPP_STATS, start=1):
        drawn = {t.name: t for t in traces_of(fig, panel)}
        expected = resnet.record_frame()[stat].loc[blocks].to_numpy()
        np.testing.assert_allclose(drawn["probes/resnet20"].y, expected, rtol=1e-6)
        assert list(drawn["probes/resnet20"].x) == list(range(9))
        assert list(drawn["probes/resnet20"].customdata) == [n for n in names if n in blocks]
        assert ("probes/plain20" in drawn) == (stat != "res_ratio")  # no residual branch
    assert "Signal propagation at initialization" in fig.layout.title.text
    one = figures.signal_propagation(pair, "act_grad_norm", layers="all")
    assert len(one.data) == 2 and len(one.data[0].x) == len(resnet.layers)
    with pytest.raises(UsageError, match="no_such_stat"):
        figures.signal_propagation(pair, "no_such_stat")


def test_spp_of_a_sweep_draws_a_line_per_width_and_says_there_are_no_blocks(sweep):
    fig = figures.signal_propagation(sweep, "chan_var")
    assert [t.name for t in fig.data] == [f"sweep/sp_mlp width {w}" for w in (32, 64, 128)]
    _, values = probe_values(sweep, "chan_var", 0)
    np.testing.assert_allclose(fig.data[1].y, values[1], rtol=1e-6)
    assert fig.layout.meta["notes"] == ["sweep/sp_mlp: no blocks recognised, every layer is drawn"]
    assert fig.layout.xaxis.title.text == "layer (input = 0)"


def test_width_check_draws_a_line_per_layer_group_with_its_exponent(sweep, pair):
    fig = figures.width_check(sweep)
    widths, values = probe_values(sweep, "act_abs_mean", 2)  # the last sweep step
    exponents = width_exponents(widths, values)
    names = list(sweep.layers["name"])
    assert [t.name for t in fig.data] == [
        f"{n} (width^{e:+.2f})" for n, e in zip(names, exponents, strict=True)
    ]
    np.testing.assert_allclose(fig.data[2].y, values[:, 2], rtol=1e-6)
    assert list(fig.data[0].x) == [32, 64, 128]
    assert "at step 2" in fig.layout.title.text
    assert "at initialization" in figures.width_check(sweep, step=0).layout.title.text
    assert figures.layer_group("layer1.10.conv1") == "layer1.*.conv1"
    with pytest.raises(UsageError, match="not a width sweep"):
        figures.width_check(pair)


def test_export_writes_the_spp_png_and_builds_the_widths_figure(probe_runs, tmp_path, capsys):
    probes = [str(probe_runs / "probes" / f"{n}.h5") for n in ("resnet20", "plain20")]
    spp = tmp_path / "spp.png"
    assert cli_main(["export", *probes, "--figure", "spp", "--out", str(spp)]) == 0
    assert capsys.readouterr().out.split() == [str(spp)]
    assert spp.read_bytes().startswith(b"\x89PNG")
    # the widths figure as export builds it (rendering it would start Chrome once more)
    sweep = str(probe_runs / "sweep" / "sp_mlp.h5")
    args = ["export", sweep, "--figure", "widths", "--step", "1", "--out", "w.png"]
    parsed = build_parser(only="export").parse_args(args)
    with open_run(sweep) as run:
        fig = export_cmd.build_figure(parsed, [run])
        assert fig.layout.title.text.startswith("Mean absolute activation across widths, at step 1")
        assert (
            default_size(fig, "widths")[0] < default_size(figures.signal_propagation(run), "spp")[0]
        )
    assert cli_main(["export", *probes, "--figure", "heatmap", "--step", "1", "--out", "x.png"])
    assert "--step applies only to" in capsys.readouterr().err
