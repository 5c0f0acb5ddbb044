"""Faults while a run is recorded: a full disk, a read-only file system, a removed folder, a slow
disk. Training goes on; the file keeps what was written and says why it ended."""

import contextlib
import errno
import os
import shutil
import subprocess
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import RunFileError, RunFileWarning
from gradscope.report import run_state, summary_text
from gradscope.store import RunWriter, open_run
from tests.run_files import fail_writes_after, lognormal_records, open_writer

pytestmark = pytest.mark.usefixtures("one_thread")

# Room left on the "full" disk: the run file takes about 470 kB at its first flush (chunks of
# 4,096 rows for steps and metrics), then another 330 kB once 4,096 metric values are logged,
# at about step 100 of the loop below, which logs METRICS values a step.
FREE_BYTES = 700 * 1024
INJECTED_BYTES = 100 * 1024  # without a tmpfs: writes fail once this much data went through
METRICS = 40
MAX_STEPS = 3000  # the disk is full long before
LAYERS = [{"name": f"l{i}", "type": "Linear", "params": 72} for i in range(4)]
STATS = ["grad_norm", "act_mean"]


@contextlib.contextmanager
def small_tmpfs(folder):
    """A tmpfs mounted at `folder` with FREE_BYTES left, or None where mounting is not
    allowed (not root, or no CAP_SYS_ADMIN)."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    size = FREE_BYTES + 256 * 1024
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        (folder / "filler").write_bytes(b"\0" * (size - FREE_BYTES))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder whose disk fills up after about FREE_BYTES: a real small tmpfs when the tests
    run as root, otherwise ENOSPC injected into the writer's data writes."""
    with small_tmpfs(tmp_path / "small") as tmpfs:
        if tmpfs is None:
            fail_writes_after(monkeypatch, INJECTED_BYTES, errno.ENOSPC)
        yield tmp_path / "small"


def ours(caught) -> list:
    """The RunFileWarnings among warnings caught."""
    return [w for w in caught if w.category is RunFileWarning]


def mlp(depth: int = 12, width: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def train_until(rec, model, opt, steps: int, stop=lambda: False, log=True) -> int:
    """Train `steps` steps (or until stop() says so), logging the loss; returns steps done."""
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    for step in range(steps):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log:
            rec.log(loss=loss.item(), **{f"metric{i}": i for i in range(METRICS - 1)})
        if stop():
            return step + 1
    return steps


def test_a_full_disk_warns_once_keeps_the_records_and_training_goes_on(full_disk):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = full_disk / "run.h5"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = gradscope.attach(model, path, optimizer=opt, every=1, flush_interval=0.01)
        done = train_until(rec, model, opt, MAX_STEPS, stop=lambda: ours(caught))
        assert done < MAX_STEPS, "the disk never filled up"
        before = [p.detach().clone() for p in model.parameters()]
        train_until(rec, model, opt, 50)  # training goes on, and nothing more is recorded
        assert rec.current_step == done + 50
        assert not rec._due  # a record is not even computed
        rec.close()  # returns normally
    assert any((a != b).any() for a, b in zip(before, model.parameters(), strict=True))
    (warning,) = ours(caught)
    message = str(warning.message)
    assert message.startswith(f"{path}: writing the run failed (No space left on device")
    assert "training goes on" in message and "on_write_error" in message
    with open_run(path) as run:
        records = len(run.steps)
        assert 0 < records < done
        assert f"keeps the {records:,} records written before (up to step {records - 1:,})" in (
            message
        )
        np.testing.assert_array_equal(run.steps, np.arange(records))
        assert np.isfinite(run.stat("grad_norm")).all()
        assert run.write_error == "No space left on device [errno 28]"
        assert run.closed and not run.is_live
        assert run_state(run).startswith("ended by a write error: No space left on device")
        assert "state:     ended by a write error" in summary_text(run)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EIO])
def test_raise_mode_raises_from_the_next_optimizer_step(tmp_path, monkeypatch, code):
    fail_writes_after(monkeypatch, 20_000, code)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "run.h5"
    rec = gradscope.attach(
        model, path, optimizer=opt, every=1, flush_interval=0.01, on_write_error="raise"
    )
    with pytest.raises(RunFileError, match=os.strerror(code)) as raised:
        train_until(rec, model, opt, MAX_STEPS, log=False)  # only opt.step() reaches the file
    assert isinstance(raised.value.__cause__, OSError)
    with pytest.raises(RunFileError, match=os.strerror(code)):
        opt.step()  # and every step after
    rec.close()  # the error was raised already: closing does not raise it again
    with open_run(path) as run:
        assert run.write_error == f"{os.strerror(code)} [errno {code}]"
        assert len(run.steps) > 0


def test_a_read_only_file_system_mid_run_keeps_a_readable_prefix(tmp_path, monkeypatch):
    # A read-only remount under an open file fails each write with EROFS (a real remount is
    # refused while the file is open for writing, so the error is injected).
    fail_writes_after(monkeypatch, 20_000, errno.EROFS)
    values = lognormal_records(400, len(STATS), len(LAYERS))
    path = tmp_path / "run.h5"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_writer(path, LAYERS, STATS, flush_interval=0.005) as w:
            step = 0
            while not w.stopped:
                assert step < len(values), "the writes never failed"
                w.append(step, values[step])
                w.log(step, {"loss": float(step)})
                step += 1
                time.sleep(0.001)
            for more in range(step, step + 10):  # dropped at no cost, no second warning
                w.append(more, values[0])
    (warning,) = ours(caught)
    assert "Read-only file system [errno 30]" in str(warning.message)
    with open_run(path) as run:
        n = len(run.steps)
        assert n > 0 and f"keeps the {n:,} records" in str(warning.message)
        np.testing.assert_array_equal(run.stat("act_mean"), values[:n, 1])
        assert run.metrics["loss"].tolist() == list(map(float, range(len(run.metrics))))
        assert run.write_error.startswith("Read-only file system")
    monkeypatch.undo()  # the file system is writable again: resuming goes on after the prefix
    with open_writer(path, LAYERS, STATS, resume=True) as w:
        w.append(1000, values[0])
    with open_run(path) as run:
        assert len(run.steps) == n + 1 and run.write_error is None


def test_a_removed_folder_stops_the_writer_and_says_so(tmp_path):
    folder = tmp_path / "runs" / "exp"
    values = lognormal_records(50, len(STATS), len(LAYERS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = open_writer(folder / "run.h5", LAYERS, STATS, flush_interval=0.005)
        w.append(0, values[0])
        shutil.rmtree(tmp_path / "runs")
        step = 1
        while not w.stopped:
            assert step < 10_000, "the writer never noticed"
            w.append(step, values[step % 50])
            step += 1
        w.close()
    (warning,) = ours(caught)
    message = str(warning.message)
    assert "the file was deleted while being written" in message
    assert "the records written so far went with it" in message


def test_a_slow_disk_never_blocks_the_caller_and_drops_are_counted(tmp_path, monkeypatch):
    release = threading.Event()
    flush = RunWriter._flush

    def slow_flush(self, closed):
        release.wait(30)  # the disk takes as long as the test wants
        flush(self, closed)

    monkeypatch.setattr(RunWriter, "_flush", slow_flush)
    values = lognormal_records(300, len(STATS), len(LAYERS))
    path = tmp_path / "run.h5"
    finished = threading.Event()
    w = open_writer(path, LAYERS, STATS, flush_interval=0.005, queue_size=16)

    def produce():
        for step in range(300):
            w.append(step, values[step])
            w.log(step, {"loss": float(step)})
        finished.set()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        producer = threading.Thread(target=produce)
        producer.start()
        assert finished.wait(30), "append waited for the disk"
        producer.join()
    release.set()
    w.close()
    (warning,) = ours(caught)
    assert "the disk is not keeping up" in str(warning.message)
    with open_run(path) as run:
        kept = run.steps
        assert len(kept) + run.dropped_records == 300
        assert run.dropped_records > 0 and len(kept) <= 16 + 2  # the queue, and the writer's hand
        assert len(run.metrics) + run.dropped_metrics == 300
        np.testing.assert_array_equal(run.stat("grad_norm"), values[kept, 0])
        assert f"dropped:   {run.dropped_records:,} records" in summary_text(run)
        dropped = (run.dropped_records, run.dropped_metrics)
    with open_writer(path, LAYERS, STATS, resume=True) as w:  # the counts are the file's
        w.append(1000, values[0])
    with open_run(path) as run:
        assert (run.dropped_records, run.dropped_metrics) == dropped
