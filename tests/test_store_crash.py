"""Real writer processes: live readers see prefixes, SIGKILL keeps flushes, live runs stay."""

import os
import random
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

import gradscope
from gradscope import RunFileError
from gradscope.store import RunWriter, open_run

N_STATS, N_LAYERS = 4, 1500  # 1,500 layers: a compressed chunk is sealed every 8 records

# A writer process: records whose values are a known function of the step, plus a "loss" metric.
WRITER_SCRIPT = r"""
import sys, time
import numpy as np
from gradscope.store import RunWriter

path, start, n_steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "resume"
layers = [{"name": f"block{i}.conv", "type": "Conv2d", "params": 9 * i} for i in range(N_LAYERS)]
stats = [f"stat{s}" for s in range(N_STATS)]
start_step = None if start == "next" else int(start)
w = RunWriter(path, layers, stats, resume=resume, start_step=start_step, flush_interval=0.02)
last = -1 if w.last_step is None else w.last_step
first = start_step if start_step is not None else last + 1
print("ready", flush=True)
grid = np.arange(N_STATS)[:, None] * 10 + np.arange(N_LAYERS)[None, :]
for step in range(first, first + n_steps):
    w.append(step, (step * 1000 + grid).astype(np.float32))
    w.log(step, {"loss": step * 0.5})
    time.sleep(0.002)
w.close()
""".replace("N_STATS", str(N_STATS)).replace("N_LAYERS", str(N_LAYERS))


def _expected(steps):
    grid = np.arange(N_STATS)[:, None] * 10 + np.arange(N_LAYERS)[None, :]
    return (steps[:, None, None] * 1000 + grid[None]).astype(np.float32)  # [records, stats, layers]


def _start_writer(path, start, n_steps, mode):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path), str(start), str(n_steps), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _check_consistent_prefix(run):
    """Steps are 0..n-1 and every stat of every record holds its known values."""
    steps = run.steps
    np.testing.assert_array_equal(steps, np.arange(len(steps)))
    expected = _expected(steps)
    for s, name in enumerate(run.stats):
        np.testing.assert_array_equal(run.stat(name), expected[:, s, :])
    metrics = run.metrics
    if len(metrics):
        loss = metrics["loss"]
        np.testing.assert_array_equal(loss.to_numpy(), loss.index.to_numpy() * 0.5)
        assert loss.index.max() <= len(steps)  # a metric is logged right after its record
    return len(steps)


def test_live_reader_sees_consistent_growing_prefixes(tmp_path):
    path = tmp_path / "live.h5"
    n_steps = 300
    proc = _start_writer(path, "next", n_steps, "new")
    seen, live_seen = [], False
    with open_run(path) as run:
        while proc.poll() is None:
            run.refresh()
            live_seen = live_seen or run.is_live
            seen.append(_check_consistent_prefix(run))
            time.sleep(0.01)
        assert proc.wait() == 0
        run.refresh()
        assert _check_consistent_prefix(run) == n_steps
        assert run.closed and not run.is_live
    assert live_seen
    assert seen == sorted(seen)  # never goes backwards
    assert len({n for n in seen if 0 < n < n_steps}) >= 3  # saw several partial prefixes


def _kill_at_random_moment(proc, rng):
    time.sleep(rng.uniform(0.15, 0.6))
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_sigkill_keeps_a_consistent_prefix_and_resume_continues(tmp_path):
    path = tmp_path / "crash.h5"
    rng = random.Random(os.getpid())
    _kill_at_random_moment(_start_writer(path, "next", 100_000, "new"), rng)
    with open_run(path) as run:
        n_first = _check_consistent_prefix(run)
        assert n_first > 0 and not run.closed

    # Resume from a "checkpoint" a few steps back, then crash again.
    restart = max(0, n_first - 5)
    _kill_at_random_moment(_start_writer(path, restart, 100_000, "resume"), rng)
    with open_run(path) as run:
        n_second = _check_consistent_prefix(run)
        assert n_second >= restart

    # Resume where the file ends and finish cleanly.
    proc = _start_writer(path, "next", 50, "resume")
    assert proc.wait() == 0
    with open_run(path) as run:
        n_final = _check_consistent_prefix(run)
        assert n_final == n_second + 50 and run.closed
    with h5py.File(path, "r") as f:  # raw check: no metric logged twice at one step
        metric_steps = f["metrics/step"][:]
        assert len(np.unique(metric_steps)) == len(metric_steps)


# A script that opens each cut copy with open_run, reads everything, and prints one line each.
READ_CUTS_SCRIPT = r"""
import sys, time
from gradscope import RunFileError, diagnose, open_run
for path in sys.argv[1:]:
    started = time.monotonic()
    try:
        with open_run(path) as run:
            for name in run.stats:
                run.stat(name)
            run.metrics, run.record_frame(), diagnose(run)
        outcome = "read"
    except RunFileError as e:
        outcome = "RunFileError " + str(e).replace("\n", " ")
    print(f"{time.monotonic() - started:.2f} {outcome}", flush=True)
"""


def test_cut_copies_of_a_live_run_fail_fast(cut_live_runs):
    # A copy of a run that is still being written, cut short: HDF5's SWMR reader used to retry
    # metadata reads past the end for minutes, and read cut raw data as zeros without a word.
    done = subprocess.run(
        [sys.executable, "-c", READ_CUTS_SCRIPT, *map(str, cut_live_runs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == len(cut_live_runs), done.stderr
    for cut, line in zip(cut_live_runs, lines, strict=True):
        seconds, outcome = line.split(" ", 1)
        assert outcome.startswith(f"RunFileError {cut}"), line
        assert float(seconds) < 5, line


# A process writing a run (as attach(..., overwrite=True) does, without torch's import time).
LIVE_OVERWRITER_SCRIPT = r"""
import sys, time
import numpy as np
from gradscope.store import RunWriter

layers = [{"name": name, "type": "Linear", "params": 40} for name in ("0", "2")]
w = RunWriter(sys.argv[1], layers, ["grad_norm"], overwrite=True, flush_interval=0.02)
for step in range(60):
    w.append(step, np.full((1, 2), step, np.float32))
time.sleep(0.2)  # past a flush: all 60 records committed
print("ready", flush=True)
time.sleep(120)
"""


def test_overwrite_refuses_a_file_that_a_live_writer_holds(tmp_path):
    path = tmp_path / "run.h5"
    RunWriter(path, [{"name": "old", "type": "Linear", "params": 1}], ["x"]).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_OVERWRITER_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    try:
        assert proc.stdout.readline().strip() == "ready"
        live = f"pid {proc.pid} on {socket.gethostname()}"
        for kwargs in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(RunFileError, match=f"live recorder \\({live}\\)") as caught:
                gradscope.attach(model, path, **kwargs)
            assert "\n" not in str(caught.value)
        layers = [{"name": n, "type": "Linear", "params": 1} for n in ("0", "2")]
        with pytest.raises(RunFileError, match=f"\\({live}\\).*refusing to replace it"):
            RunWriter(path, layers, ["grad_norm"], overwrite=True)
        with open_run(path) as run:  # the live run is untouched
            assert run.is_live and run.steps.tolist() == list(range(60))
    finally:
        proc.kill()
        proc.wait()
    # The writer is gone (killed: the file is not marked closed): now it may be replaced.
    with gradscope.attach(model, path, overwrite=True):
        pass
    with open_run(path) as run:
        assert run.closed and len(run.steps) == 0


def test_a_run_this_process_writes_is_refused_until_its_writer_closes(tmp_path):
    path = tmp_path / "run.h5"
    layers = [{"name": "fc", "type": "Linear", "params": 3}]
    first = RunWriter(path, layers, ["grad_norm"])
    first.append(0, np.ones((1, 1), np.float32))
    with pytest.raises(RunFileError, match=r"this process \(pid \d+\) is still writing"):
        RunWriter(path, layers, ["grad_norm"], overwrite=True)
    first.close()
    RunWriter(path, layers, ["grad_norm"], resume=True).close()
    with open_run(path) as run:
        assert run.steps.tolist() == [0]


def test_check_readable_finds_every_cut_copy_that_still_opens(cut_live_runs):
    opened = 0
    for cut in cut_live_runs:
        try:
            run = open_run(cut)
        except RunFileError:
            continue  # cut inside what opening reads
        opened += 1
        with run, pytest.raises(RunFileError, match=f"{cut}: (cannot read the records|truncated)"):
            run.check_readable()
    assert opened >= 3  # the cuts that list their records but do not hold them
