"""`gradscope record`: files and summary, bad input (exit 2, nothing written), Ctrl-C and resume."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gradscope
from gradscope.cli import main
from gradscope.train._checkpoint import load_checkpoint
from tests.run_files import fail_writes_after

TINY = ["--data", "synthetic", "--image-size", "8", "--batch-size", "16", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def record(*flags) -> int:
    return main(["record", *flags])


def read_run(path):
    with gradscope.open_run(path) as run:
        return run.steps.copy(), run.metrics.copy(), run.stat("grad_norm"), dict(run.attrs)


ACT_STATS = ("act_mean", "act_std", "act_absmax", "act_zero_frac", "act_grad_norm")


def assert_activation_stats_finite(path):
    """Every watched layer of the bundled nets has floating outputs: no NaN at any record."""
    with gradscope.open_run(path) as run:
        for stat in ACT_STATS:
            values = run.stat(stat)
            bad = sorted(set(run.layers["name"][~np.isfinite(values).all(axis=0)]))
            assert not bad, f"{path.name}: {stat} not finite in {bad}"


def test_pair_writes_run_files_config_checkpoints_and_summary(tmp_path, capsys):
    code = record(
        "--model",
        "resnet20",
        "--baseline",
        "plain20",
        *TINY,
        "--steps",
        "6",
        "--every",
        "2",
        "--eval-every",
        "3",
        "--out",
        str(tmp_path),
        "--name",
        "pair",
        "--quiet",
    )
    assert code == 0
    run_dir = tmp_path / "pair"
    names = {"config.json", "resnet20.h5", "plain20.h5", "resnet20.ckpt.pt", "plain20.ckpt.pt"}
    assert {p.name for p in run_dir.iterdir()} == names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "resnet20" and config["baselines"] == ["plain20"]
    assert config["train"]["steps"] == 6 and config["train"]["record_every"] == 2
    for name in ("resnet20", "plain20"):
        steps, metrics, grad_norm, attrs = read_run(run_dir / f"{name}.h5")
        np.testing.assert_array_equal(steps, [0, 2, 4])
        assert list(metrics.index) == list(range(6))
        assert attrs["model"] == name and bool(attrs["synthetic"])
        assert load_checkpoint(run_dir / f"{name}.ckpt.pt")["done"]
        assert_activation_stats_finite(run_dir / f"{name}.h5")
    out = capsys.readouterr().out
    assert "train loss" in out and "test err" in out
    assert "resnet20: act_grad_norm first/last layer" in out
    assert f"gradscope dashboard --runs {run_dir}" in out
    assert "gradscope export" in out and "--figure heatmap" in out


def test_a_full_disk_is_a_warning_and_training_goes_on(tmp_path, capsys, monkeypatch):
    fail_writes_after(monkeypatch, 30_000, errno.ENOSPC)
    flags = ["--model", "resnet20", *TINY, "--steps", "12", "--every", "1", "--eval-every", "12"]
    assert record(*flags, "--out", str(tmp_path), "--name", "full", "--quiet") == 0
    captured = capsys.readouterr()
    path = tmp_path / "full" / "resnet20.h5"
    (warning,) = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning.startswith(
        f"gradscope record: warning: {path}: writing the run failed (No space left on device"
    )
    assert "12/12" in captured.out  # trained to the end
    assert "resnet20: recording ended by a write error: No space left on device" in captured.out
    assert load_checkpoint(tmp_path / "full" / "resnet20.ckpt.pt")["done"]
    with gradscope.open_run(path) as run:
        assert len(run.steps) < 12 and run.write_error.startswith("No space left")


def test_no_record_trains_without_run_files(tmp_path, capsys):
    code = record(
        "--model",
        "resnet20",
        *TINY,
        "--steps",
        "2",
        "--no-record",
        "--out",
        str(tmp_path),
        "--name",
        "bare",
        "--quiet",
    )
    assert code == 0
    assert {p.name for p in (tmp_path / "bare").iterdir()} == {"config.json", "resnet20.ckpt.pt"}
    assert "without recording" in capsys.readouterr().out


NEW = ["--data", "synthetic", "--out", "{tmp}/out", "--quiet"]  # completes a new-run command


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "resnet57", *NEW], "valid names: resnet20"),
        (["--model", "resnet20", "--baseline", "plane56", *NEW], "unknown model 'plane56'"),
        (["--model", "resnet20", "--baseline", "resnet20", *NEW], "given twice"),
        (["--model", "resnet20", "--steps", "0", *NEW], "--steps must be a positive integer"),
        (["--model", "resnet20", *NEW, "--data", "{tmp}/no-such-data"], "no dataset"),
        (["--model", "resnet20", *NEW, "--data", "{tmp}/empty"], "not a dataset layout"),
        (["--model", "resnet20", *NEW, "--out", "{tmp}/a-file/runs"], "is a file, not a folder"),
        (["--model", "resnet20", "--name", "a/b", *NEW], "plain folder name"),
        (["--baseline", "plain20", *NEW], "give --model"),
        (["--resume", "{tmp}/empty"], "no config.json"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, flags, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = record(*(flag.format(tmp=tmp_path) for flag in flags))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gradscope record: error: ") and err.count("\n") == 1
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


def test_resume_of_a_folder_without_checkpoint_is_an_error(tmp_path, capsys):
    run_dir = tmp_path / "exp"
    run_dir.mkdir()
    config = {
        "model": "resnet20",
        "baselines": [],
        "out": str(tmp_path),
        "name": "exp",
        "train": {"data": "synthetic", "steps": 4},
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    assert record("--resume", str(run_dir)) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


def test_ctrl_c_then_sigterm_print_the_resume_command_and_resume_matches_an_uninterrupted_run(
    tmp_path, capsys
):
    steps = 60
    flags = [
        "--model",
        "resnet20",
        *TINY,
        "--steps",
        str(steps),
        "--every",
        "5",
        "--eval-every",
        "20",
        "--out",
        str(tmp_path),
    ]
    run_dir = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "gradscope.cli", "record"]
    # Ctrl-C
    process = subprocess.Popen(
        [*cli, *flags, "--quiet", "--name", "interrupted"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "resnet20.h5").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the run file never appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert f"gradscope record --resume {run_dir}" in err
    stopped_at = load_checkpoint(run_dir / "resnet20.ckpt.pt")["step"]
    assert 0 < stopped_at < steps
    steps_so_far, _, _, _ = read_run(run_dir / "resnet20.h5")  # closed cleanly: readable

    # SIGTERM (a scheduler's stop) while resumed, its output going to a log file: progress lines
    process = subprocess.Popen(
        [*cli, "--resume", str(run_dir)],
        env={**env, "GRADSCOPE_PROGRESS_SECONDS": "0"},  # a line every step
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = process.stdout.readline()  # the resumed session's first step is done
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    terminated_at = load_checkpoint(run_dir / "resnet20.ckpt.pt")["step"]
    assert stopped_at < terminated_at < steps
    assert (
        f"stopped by SIGTERM (resnet20 checkpointed at step {terminated_at}); resume with:" in err
    )
    assert f"gradscope record --resume {run_dir}" in err
    lines = [first, *out.splitlines()]
    assert lines[0].startswith(f"resnet20 step {stopped_at + 1}/{steps}  ")
    line = r"resnet20 step \d+/60  ([\d.]+%  [\d.]+ steps/s  loss [\d.]+  err|evaluated on)"
    assert all(re.match(line, text) for text in lines), lines
    assert "\r" not in out and err.count("\r") == 0  # no bars in log files

    assert record("--resume", str(run_dir), "--steps", "5") == 2  # the saved config decides
    assert "--resume reads the configuration" in capsys.readouterr().err
    assert record("--resume", str(run_dir), "--quiet") == 0
    assert record(*flags, "--quiet", "--name", "straight") == 0
    resumed = read_run(run_dir / "resnet20.h5")
    straight = read_run(tmp_path / "straight" / "resnet20.h5")
    np.testing.assert_array_equal(resumed[0], np.arange(0, steps, 5))  # each step exactly once
    assert list(resumed[1].index) == list(range(steps))
    pd.testing.assert_frame_equal(resumed[1], straight[1])
    np.testing.assert_array_equal(resumed[2], straight[2])
    assert len(steps_so_far) <= len(resumed[0])

    capsys.readouterr()
    assert record("--resume", str(run_dir), "--quiet") == 0  # finished: nothing to train
    assert "resnet20" in capsys.readouterr().out


def test_example_02_runs_the_pair_through_the_python_api(tmp_path):
    example = Path(__file__).parents[1] / "examples" / "02_resnet_vs_plain.py"
    command = [
        sys.executable,
        str(example),
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--batch-size",
        "16",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "resnet20.h5").is_file() and (run_dir / "plain20.h5").is_file()
    assert f"files: {run_dir / 'resnet20.h5'}" in done.stdout
