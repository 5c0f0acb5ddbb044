"""Every example runs to the end (with small settings) and leaves a readable run file."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import gradscope

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        # no example needs the Hugging Face Hub; one thread: on a shared 2-core machine OpenMP
        # spin-waits made the Lightning example 36 s instead of 5 s
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == [
        "01_attach_any_model.py",
        "02_resnet_vs_plain.py",
        "03_lightning.py",
        "04_hf_trainer.py",
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


def test_03_lightning(tmp_path):
    out = tmp_path / "lightning.h5"
    args = ["--out", str(out), "--steps", "4", "--batch-size", "8", "--accumulate", "2"]
    stdout = run_example("03_lightning.py", *args)
    assert str(out) in stdout and "test_error" in stdout
    run = gradscope.open_run(out)
    assert list(run.steps) == [0, 2]  # every 2nd of 4 optimizer steps, 2 micro-batches each
    assert run.attrs["framework"] == "lightning" and run.attrs["accumulate_grad_batches"] == 2
    assert list(run.metrics["loss"].dropna().index) == [0, 1, 2, 3]
    assert list(run.metrics["test_error"].dropna().index) == [0, 1, 2, 3]  # every 2 batches


def test_04_hf_trainer(tmp_path):
    out = tmp_path / "gpt2.h5"
    stdout = run_example("04_hf_trainer.py", "--out", str(out), "--steps", "3", "--batch-size", "4")
    assert str(out) in stdout
    run = gradscope.open_run(out)
    assert list(run.steps) == [0, 1, 2]
    assert run.attrs["framework"] == "transformers" and run.attrs["model_type"] == "gpt2"
    assert list(run.metrics["loss"].dropna().index) == [0, 1, 2]
    assert "gradient noise scale (model, mean of the last 3 records)" in stdout
    assert np.isfinite(run.stat("gns_small_sq")).any()  # 2 micro-batches a step
