"""Tests of `gradscope inspect`: the printed report and the errors for bad files."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from gradscope import cli
from gradscope.store import RunWriter


def main(argv):
    return cli.main(argv)


def _write_run(path, n_layers=3, n_records=4):
    layers = [
        {"name": f"stage{i // 10}.block{i % 10}", "type": "Conv2d", "params": 100 + i}
        for i in range(n_layers)
    ]
    values = np.arange(n_records * 2 * n_layers, dtype=np.float32).reshape(n_records, 2, n_layers)
    with RunWriter(
        path, layers, ["grad_norm", "update_ratio"], attrs={"model_class": "ResNet20"}
    ) as w:
        for i in range(n_records):
            w.append(10 * i, values[i] + 0.5)
            w.log(10 * i, {"loss": 3.0 - i})
        w.log(35, {"lr": 0.05})
    return layers, values + 0.5


def test_inspect_prints_summary_latest_record_and_metrics(tmp_path, capsys):
    path = tmp_path / "run.h5"
    layers, values = _write_run(path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ResNet20" in out and "closed" in out
    assert "4 records, steps 0..30" in out
    assert "latest record (step 30)" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for depth, layer in enumerate(layers):  # row: name, type, params, grad_norm, update_ratio
        row = lines[layer["name"]]
        assert row[1:3] == ["Conv2d", str(layer["params"])]
        assert [float(x) for x in row[3:5]] == pytest.approx(values[-1, :, depth].tolist())
    assert lines["loss"][1:] == ["30", "0"]
    assert lines["lr"][1:] == ["35", "0.05"]


def test_inspect_prints_the_origin_of_a_non_finite_value_first(tmp_path, capsys):
    path = tmp_path / "run.h5"
    layers, _ = _write_run(path)
    message = "step 30: first non-finite value in the forward pass of stage0.block1 (Conv2d)"
    with RunWriter(path, layers, ["grad_norm", "update_ratio"], resume=True) as w:
        w.event({"step": 25, "kind": "amp_overflow", "update": "skipped"})
        origin = {"step": 30, "kind": "nonfinite", "phase": "forward", "layer": "stage0.block1"}
        w.event(origin | {"update": "skipped", "recorded": True, "message": message})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        "non-finite values (1 step):",
        f"  {message} [the update was skipped; recorded in full]",
    ]
    assert (
        'nonfinite: origins stored: 1, updates skipped by nonfinite="skip": 1, AMP overflows '
        "skipped by the GradScaler: 1"
    ) in out
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nonfinite"] == {"origins": 1, "updates_skipped": 1, "amp_overflows_skipped": 1}
    assert [e["kind"] for e in report["events"]] == ["amp_overflow", "nonfinite"]


def test_inspect_prints_every_layer_of_a_deep_run(tmp_path, capsys):
    path = tmp_path / "deep.h5"
    layers, _ = _write_run(path, n_layers=250, n_records=2)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert all(layer["name"] in names for layer in layers)
    assert "..." not in out


@pytest.mark.parametrize("content", [None, b"plain text"])
def test_inspect_reports_bad_files_with_exit_code_2(tmp_path, capsys, content):
    path = tmp_path / "nope.h5"
    if content is not None:
        path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradscope inspect: error:") and "nope.h5" in err


def test_inspect_of_a_folder_says_it_is_a_folder_and_names_its_runs(tmp_path, capsys):
    for name in ("b.h5", "a.h5"):
        _write_run(tmp_path / name)
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"gradscope inspect: error: {tmp_path}: is a folder, not a run file; name one of the "
        "run files in it: a.h5, b.h5\n"
    )
    assert main(["inspect", str(tmp_path.parent)]) == 2
    assert "none is directly in this folder" in capsys.readouterr().err


def test_inspect_in_the_runs_own_folder_names_it_without_a_slash(tmp_path, capsys, monkeypatch):
    _write_run(tmp_path / "run.h5")
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "run.h5"]) == 0
    out = capsys.readouterr().out
    assert "\ndiagnosis of run: 4 records" in out and "/run" not in out


def test_inspect_shows_diagnosis_and_json(tmp_path, capsys):
    import json

    from gradscope.diagnosis import diagnose
    from gradscope.store import open_run

    path = tmp_path / "run.h5"
    _write_run(path)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    with open_run(path) as run:
        expected = diagnose(run)
    assert expected.to_text() in text
    assert main(["inspect", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # strict JSON
    assert doc["records"] == 4 and doc["stats"] == list(open_run(path).stats)
    assert len(doc["latest_record"]) == 3
    assert doc["diagnosis"]["findings"] == expected.to_dict()["findings"]


def test_cut_copies_of_a_live_run_are_one_line_exit_2_within_seconds(cut_live_runs):
    for cut in cut_live_runs:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "gradscope.cli", "inspect", str(cut)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert time.monotonic() - started < 15, cut
        assert done.returncode == 2, (cut, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gradscope inspect: error: "), lines
        assert str(cut) in lines[0]
