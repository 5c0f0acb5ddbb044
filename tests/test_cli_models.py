"""Tests for `gradscope models`: the model list, a layer table, and exit codes."""

import re

import pytest

from gradscope.cli import main
from gradscope.models import count_parameters, list_models


def _number(text: str, label: str) -> int:
    """The integer printed after `label:` (with thousands separators)."""
    match = re.search(rf"^{label}: ([\d,]+)", text, re.MULTILINE)
    assert match, f"no '{label}:' line in output:\n{text}"
    return int(match.group(1).replace(",", ""))


def test_models_lists_every_model_with_depth_and_params(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["name", "family", "depth", "input_size", "params"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == list_models()
    assert rows["resnet56"][2:] == ["56", "32", "855,770"]
    assert rows["tv_resnet18"][1:4] == ["torchvision", "18", "224"]


def test_models_resnet20_prints_layer_table_with_totals(capsys):
    assert main(["models", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert _number(out, "total params") == count_parameters("resnet20") == 272_474
    assert _number(out, "total FLOPs") > 0
    lines = out.splitlines()
    assert lines[1].split() == ["name", "type", "output_shape", "params", "flops"]
    assert lines[2].startswith("conv1 ") and "(1, 16, 32, 32)" in lines[2]
    assert any(line.startswith("layer2.0.downsample.0 ") for line in lines)
    # the per-layer params column adds up to the total
    layer_rows = [line for line in lines[2:] if not line.startswith("total")]
    assert sum(int(line.split()[-2].replace(",", "")) for line in layer_rows) == 272_474


def test_models_options_change_the_table(capsys):
    argv = ["models", "resnet20", "--num-classes", "100", "--input-size", "64", "--shortcut", "A"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert _number(out, "total params") == count_parameters("resnet20", 100, "A")
    assert "(1, 16, 64, 64)" in out
    assert "ZeroPadShortcut" in out


def test_unknown_model_exits_2_with_valid_names(capsys):
    assert main(["models", "resnet21"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradscope models: error: unknown model 'resnet21'")
    assert "resnet20" in err and "tv_resnet152" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "plain20", "--shortcut", "A"],  # plain nets have no shortcut to choose
        ["models", "--input-size", "64"],  # an option of the table without a model name
        ["models", "resnet20", "--num-classes", "0"],
        ["models", "resnet20", "--input-size", "0"],
    ],
)
def test_bad_input_exits_2(argv, capsys):
    assert main(argv) == 2
    assert "gradscope models: error:" in capsys.readouterr().err


def test_bad_shortcut_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["models", "resnet20", "--shortcut", "C"])
    assert info.value.code == 2
