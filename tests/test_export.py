"""Tests of PNG export (gradscope.export) and the `gradscope export` command."""

import struct
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from gradscope import export
from gradscope.cli import main
from gradscope.errors import UsageError
from gradscope.store import RunWriter


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == export.PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    """A 4-layer, 30-record run with grad_norm and a logged loss."""
    path = tmp_path_factory.mktemp("runs") / "a.h5"
    layers = [{"name": f"layer{j}", "type": "Linear", "params": 10} for j in range(4)]
    with RunWriter(path, layers=layers, stats=["grad_norm", "act_mean"]) as w:
        for i in range(30):
            row = np.full(4, 1.0 + i, dtype=np.float32)
            w.append(i * 10, np.stack([row, np.full(4, np.nan, np.float32)]))
            w.log(i * 10, {"loss": 1.0 / (1 + i)})
    return path


def test_missing_chrome_names_the_install_command(monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    monkeypatch.setattr(export, "_downloaded_chrome", lambda: None)
    with pytest.raises(UsageError, match="install one with: ") as error:
        export.figure_png_bytes(go.Figure())
    assert export.chrome_install_command() in str(error.value)


def test_browser_path_must_be_executable(monkeypatch, tmp_path):
    not_a_browser = tmp_path / "chrome"
    not_a_browser.write_text("")
    monkeypatch.setenv("BROWSER_PATH", str(not_a_browser))
    with pytest.raises(UsageError, match="BROWSER_PATH"):
        export.find_chrome()


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("a.jpg", {}, "must end in .png"),
        ("missing/a.png", {}, "does not exist"),
        ("a.png", {"width": 0}, "width"),
        ("a.png", {"scale": 0}, "scale"),
    ],
)
def test_write_png_rejects_bad_output(tmp_path, name, kwargs, message):
    with pytest.raises(UsageError, match=message):
        export.write_png(go.Figure(), tmp_path / name, **kwargs)


def test_write_png_size_is_layout_times_scale(tmp_path):
    fig = go.Figure(go.Scatter(y=[1, 3, 2]))
    path = export.write_png(fig, tmp_path / "f.png", width=320, height=200, scale=2)
    assert png_size(path.read_bytes()) == (640, 400)


def test_cli_export_heatmap_png(run_path, tmp_path, capsys):
    out = tmp_path / "heat.png"
    code = main(
        [
            "export", str(run_path), str(run_path), "--figure", "heatmap", "--stat", "grad_norm",
            "--out", str(out), "--width", "400", "--height", "300", "--scale", "1.5",
        ]
    )  # fmt: skip
    assert code == 0
    assert png_size(out.read_bytes()) == (600, 450)
    assert capsys.readouterr().out.strip() == str(out)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--figure", "flow", "--stat", "act_std"], "'act_std' is not in"),
        (["--figure", "heatmap", "--stat", "act_mean"], "has no finite act_mean value"),
        (["--figure", "flow", "--stat", "act_mean"], "has no finite act_mean value at step 290"),
        (["--width", "100000", "--height", "100000"], "too large"),
        (["--figure", "flow", "--step", "100000"], "beyond the runs"),
        (["--figure", "ratio"], "exactly 2 runs"),
        (["--figure", "heatmap", "--step", "5"], "--step applies only to --figure flow"),
        (["--figure", "flow", "--types", "Conv2d"], "no layer matches"),
    ],
)
def test_cli_export_errors_are_one_line_exit_2(run_path, tmp_path, capsys, extra, message):
    code = main(["export", str(run_path), "--out", str(tmp_path / "x.png"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gradscope export: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "x.png").exists()


def test_too_large_names_the_size_it_would_write(run_path, tmp_path, capsys):
    # two heatmap panels of 4 rows: 2 x 480 + 320 = 1,280 wide, 260 + 160 = 420 tall
    out = str(tmp_path / "x.png")
    assert main(["export", str(run_path), str(run_path), "--scale", "30", "--out", out]) == 2
    assert capsys.readouterr().err == (
        "gradscope export: error: a 38,400 x 12,600 pixel PNG (1,280 x 420 at scale 30) is too "
        "large: at most 32,767 pixels a side and 268,435,456 in all (width x height x scale "
        "squared); choose a smaller --width, --height or --scale\n"
    )
    assert main(["export", str(run_path), "--height", "3000", "--scale", "12", "--out", out]) == 2
    assert "a 36,000 pixel PNG (3,000 at scale 12)" in capsys.readouterr().err  # before reading
    with pytest.raises(UsageError, match=r"35,000 x 25,000 pixel PNG \(700 x 500 at scale 50\)"):
        export.write_png(go.Figure(), out, scale=50)  # plotly's default size
    fig = go.Figure(layout={"width": 400, "height": 17000})
    with pytest.raises(UsageError, match=r"800 x 34,000 pixel PNG \(400 x 17,000 at scale 2\)"):
        export.figure_png_bytes(fig, scale=2)  # the figure's own size


def test_cli_export_missing_run_file(tmp_path, capsys):
    code = main(["export", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert capsys.readouterr().err.startswith("gradscope export: error: ")


def test_cli_export_step_between_records_says_which_it_drew(run_path, capsys, monkeypatch):
    drawn = []
    monkeypatch.setattr(
        "gradscope.cli.export_cmd.write_png", lambda fig, out, **kw: drawn.append(fig) or out
    )
    assert (
        main(["export", str(run_path), "--figure", "flow", "--step", "13", "--out", "f.png"]) == 0
    )
    (fig,) = drawn
    assert "nearest record to step 13 (step 10)" in fig.layout.title.text
    assert "step 10" in fig.data[0].legendgrouptitle.text


@pytest.fixture(scope="module")
def twin_paths(tmp_path_factory):
    """A tiny resnet56/plain56 pair with the bundled nets' layer names (19 and 15 layers)."""
    from tests.run_files import write_twin

    folder = tmp_path_factory.mktemp("worked")
    paths = [folder / "resnet56.h5", folder / "plain56.h5"]
    for path in paths:
        write_twin(path, path.stem)
    return [str(p) for p in paths]


def drawn_figures(monkeypatch):
    """Figures the CLI would write, with their sizes, instead of rendering them."""
    drawn = []
    monkeypatch.setattr(
        "gradscope.cli.export_cmd.write_png",
        lambda fig, out, **kw: drawn.append((fig, kw)) or out,
    )
    return drawn


def test_cli_export_ratio_of_nets_with_different_layers(twin_paths, tmp_path, capsys):
    out = tmp_path / "ratio.png"
    args = ["export", *twin_paths, "--figure", "ratio", "--types", "Conv2d", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    from gradscope.figures._heatmap import heatmap_height

    # 7 convolutions both nets have (the 2 downsample convs are left out): readable rows
    assert png_size(out.read_bytes()) == (export.DEFAULT_WIDTHS["ratio"], heatmap_height(7))


def test_cli_export_ratio_numerator_is_the_users_and_the_figure_says_which(
    twin_paths, monkeypatch, capsys
):
    from gradscope.store import open_run

    drawn = drawn_figures(monkeypatch)
    resnet_path, plain_path = twin_paths
    base = ["export", resnet_path, plain_path, "--figure", "ratio", "--out", "x.png"]
    for numerator in ("plain56", plain_path, f"{Path(plain_path).parent.name}/plain56"):
        assert main([*base, "--numerator", numerator]) == 0
    assert main(base) == 0  # the first run given, by default
    *plain_on_top, (resnet_on_top, _) = drawn
    for fig, _ in plain_on_top:
        assert fig.layout.title.text.startswith("Gradient norm ratio plain56 / resnet56 by layer")
        assert "red: plain56 more, blue: resnet56 more" in fig.layout.title.text
        assert (
            fig.layout.coloraxis.colorbar.title.text == "plain56 / resnet56:<br>red = plain56 more"
        )
    assert "ratio resnet56 / plain56 by layer" in resnet_on_top.layout.title.text
    # the colours are log10(plain / resnet): by hand from the files, layer by layer
    with open_run(plain_path) as plain, open_run(resnet_path) as resnet:
        rows = list(plain_on_top[0][0].data[0].y)
        p = plain.stat("grad_norm")[:, [list(plain.layers["name"]).index(n) for n in rows]]
        r = resnet.stat("grad_norm")[:, [list(resnet.layers["name"]).index(n) for n in rows]]
    np.testing.assert_allclose(plain_on_top[0][0].data[0].z, np.log10(p / r).T, rtol=1e-5)
    np.testing.assert_allclose(resnet_on_top.data[0].z, np.log10(r / p).T, rtol=1e-5)
    assert main([*base, "--numerator", "resnet20"]) == 2
    assert "--numerator resnet20 is neither run; name one of" in capsys.readouterr().err
    twice = ["export", plain_path, plain_path, *base[3:], "--numerator", "plain56"]
    assert main(twice) == 2
    assert "--numerator plain56 names both runs" in capsys.readouterr().err
    heatmap = ["export", *twin_paths, "--numerator", "plain56", "--out", "x.png"]
    assert main(heatmap) == 2
    assert "--numerator applies only to --figure ratio" in capsys.readouterr().err


def test_cli_export_paper_template_font_size_and_size_from_the_figure(
    twin_paths, monkeypatch, capsys
):
    drawn = drawn_figures(monkeypatch)
    base = ["export", *twin_paths, "--out", "x.png"]
    assert main([*base, "--figure", "heatmap", "--template", "paper", "--font-size", "18"]) == 0
    assert main([*base, "--figure", "curves"]) == 0
    (heat, heat_size), (curves, curves_size) = drawn
    assert heat.layout.font.size == 18 and heat.layout.title.font.size == round(18 * 1.3)
    assert heat.layout.template.layout.paper_bgcolor == "white"
    assert heat.layout.title.text == "Gradient norm by layer and step"  # in words
    assert heat_size == {"width": 2 * export.PANEL_WIDTH + export.LABELS_WIDTH,
                         "height": heat.layout.height, "scale": 1.0}  # fmt: skip
    assert curves.layout.font.size == export.DEFAULT_FONT_SIZE
    assert curves.layout.yaxis2.title.text == "error (%)"
    assert curves_size["width"] == export.DEFAULT_WIDTHS["curves"]
    code = main([*base, "--font-size", "200"])
    assert code == 2 and "font size must be between" in capsys.readouterr().err


def test_log_axes_have_decade_ticks_only(twin_paths, monkeypatch):
    drawn = drawn_figures(monkeypatch)
    assert main(["export", *twin_paths, "--figure", "flow", "--out", "x.png"]) == 0
    ((flow, _),) = drawn
    assert flow.layout.yaxis.type == "log" and flow.layout.yaxis.dtick == 1
    assert flow.layout.yaxis.exponentformat == "power"
