"""Every example runs to the end (with small settings) and leaves a readable run file."""

import subprocess
import sys
from pathlib import Path

import gradscope

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == [
        "01_attach_any_model.py",
        "02_resnet_vs_plain.py",
    ]


def test_01_attach_any_model(tmp_path):
    out = tmp_path / "mobilenet.h5"
    stdout = run_example("01_attach_any_model.py", "--out", str(out), "--steps", "3")
    assert str(out) in stdout
    run = gradscope.open_run(out)
    assert list(run.steps) == [0, 2]
    assert run.attrs["model_class"] == "MobileNetV3"


def test_02_resnet_vs_plain(tmp_path):
    stdout = run_example(
        "02_resnet_vs_plain.py", "--out", str(tmp_path), "--steps", "6", "--batch-size", "16"
    )
    files = sorted(tmp_path.rglob("*.h5"))
    assert [f.name for f in files] == ["plain20.h5", "resnet20.h5"]
    for f in files:
        assert str(f) in stdout
        run = gradscope.open_run(f)
        assert len(run.steps) > 0 and run.attrs.get("synthetic") is True
