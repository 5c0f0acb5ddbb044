"""Tests of the run store: writer/reader round trip, reductions, resume and error handling."""

import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pandas as pd
import pytest

from gradscope.errors import RunFileError, UsageError
from gradscope.store import RunWriter, open_run
from tests.run_files import lognormal_records, open_writer

LAYERS = [
    {"name": "conv1", "type": "Conv2d", "params": 432},
    {"name": "layer1.0.conv1", "type": "Conv2d", "params": 2304},
    {"name": "fc", "type": "Linear", "params": 650},
]
STATS = ["grad_norm", "act_mean"]


def _writer(path, **kwargs):
    return open_writer(path, LAYERS, STATS, **kwargs)


def _records(n, seed=0):
    return lognormal_records(n, len(STATS), len(LAYERS), seed)


def test_round_trip_of_records_metrics_and_attrs(tmp_path):
    path = tmp_path / "sub" / "run.h5"  # parent folder does not exist yet
    values = _records(7)
    with _writer(path, attrs={"model_class": "ResNet", "attach_args": {"every": 2}}) as w:
        for step in range(7):
            w.append(step * 2, values[step])
            w.log(step * 2, {"loss": 1.0 / (step + 1)})
        w.log(4, {"lr": 0.1})
        assert w.last_step == 12

    with open_run(path) as run:
        assert list(run.layers.columns[:4]) == ["name", "type", "params", "depth"]
        assert run.layers["name"].tolist() == [layer["name"] for layer in LAYERS]
        assert run.layers["params"].tolist() == [432, 2304, 650]
        assert run.layers["depth"].tolist() == [0, 1, 2]
        assert run.steps.dtype == np.int64
        assert run.steps.tolist() == [0, 2, 4, 6, 8, 10, 12]
        assert run.stats == STATS
        for i, name in enumerate(STATS):
            np.testing.assert_array_equal(run.stat(name), values[:, i, :])
        assert run.attrs["model_class"] == "ResNet"
        assert run.attrs["attach_args"] == {"every": 2}
        assert run.attrs["gradscope_version"] == "0.1.0"
        assert "torch_version" in run.attrs and "T" in run.attrs["created"]
        assert run.closed and not run.is_live

        metrics = run.metrics
        assert metrics.index.name == "step"
        assert list(metrics.columns) == ["loss", "lr"]
        assert metrics.loc[6, "loss"] == pytest.approx(0.25)
        assert metrics.loc[4, "lr"] == pytest.approx(0.1)
        assert metrics["lr"].isna().sum() == 6


def test_metrics_sorted_by_step_with_nan_gaps(tmp_path):
    path = tmp_path / "run.h5"
    with _writer(path) as w:
        w.log(5, {"acc": 0.5})
        w.log(1, {"loss": 2.0, "acc": 0.1})
        w.log(5, {"acc": 0.6})  # logged twice at one step: the last value wins
    expected = pd.DataFrame(
        {"acc": [0.1, 0.6], "loss": [2.0, np.nan]}, index=pd.Index([1, 5], name="step")
    )
    with open_run(path) as run:
        pd.testing.assert_frame_equal(run.metrics, expected)
        assert run.steps.tolist() == []
        assert run.stat("grad_norm").shape == (0, 3)
        latest = run.latest_metrics()
        assert latest.loc["acc", "value"] == pytest.approx(0.6)
        assert latest.loc["loss", "step"] == 1


def test_callable_values_are_resolved_in_the_writer(tmp_path):
    path = tmp_path / "run.h5"
    values = _records(3)
    callers = []

    def pending(i):
        def resolve():
            callers.append(threading.current_thread().name)
            return values[i]

        return resolve

    with _writer(path) as w:
        for i in range(3):
            w.append(i, pending(i))
    assert callers and all(name == "gradscope-run-writer" for name in callers)
    with open_run(path) as run:
        np.testing.assert_array_equal(run.stat("act_mean"), values[:, 1, :])


def test_to_frame_matches_a_loop(tmp_path):
    path = tmp_path / "run.h5"
    values = _records(4)
    with _writer(path) as w:
        for step in range(4):
            w.append(step + 10, values[step])
    expected = [
        (step + 10, layer["name"], depth, stat, float(values[step, s, depth]))
        for s, stat in enumerate(STATS)
        for step in range(4)
        for depth, layer in enumerate(LAYERS)
    ]
    with open_run(path) as run:
        frame = run.to_frame()
    assert list(frame.columns) == ["step", "layer", "depth", "stat", "value"]
    got = [(int(a), b, int(c), d, float(e)) for a, b, c, d, e in frame.itertuples(index=False)]
    assert sorted(got) == sorted(expected)


def _reference_read(steps, values, start, stop, max_records):
    """Brute force: select the rows, then average blocks with Python loops."""
    rows = [
        i
        for i, s in enumerate(steps)
        if (start is None or s >= start) and (stop is None or s < stop)
    ]
    if max_records is None or len(rows) <= max_records:
        return steps[rows], values[rows]
    block = -(-len(rows) // max_records)
    out_steps, out_values = [], []
    for b in range(0, len(rows), block):
        chunk = rows[b : b + block]
        out_steps.append(steps[chunk[0]])
        means = []
        for layer in range(values.shape[1]):
            finite = [values[i, layer] for i in chunk if not np.isnan(values[i, layer])]
            means.append(sum(map(float, finite)) / len(finite) if finite else np.nan)
        out_values.append(means)
    return np.array(out_steps), np.array(out_values, dtype=np.float32)


@pytest.mark.parametrize(
    "start,stop,max_records",
    [(None, None, None), (None, None, 7), (13, 171, 10), (50, None, 1), (0, 3, 100), (500, 9, 5)],
)
def test_read_window_and_block_means_match_brute_force(tmp_path, start, stop, max_records):
    path = tmp_path / "run.h5"
    values = _records(90, seed=1)
    values[5:9, 0, 1] = np.nan  # a fully NaN block for some reductions
    values[20, 0, :] = np.nan
    steps = np.arange(90) * 2 + 1
    with _writer(path) as w:
        for i, step in enumerate(steps):
            w.append(int(step), values[i])
    with open_run(path) as run:
        got_steps, got_values = run.read("grad_norm", start, stop, max_records)
    want_steps, want_values = _reference_read(steps, values[:, 0, :], start, stop, max_records)
    np.testing.assert_array_equal(got_steps, want_steps)
    assert got_values.dtype == np.float32
    np.testing.assert_allclose(got_values, want_values.reshape(got_values.shape), rtol=1e-5)


def test_unknown_stat_lists_the_available_ones(tmp_path):
    path = tmp_path / "run.h5"
    _writer(path).close()
    with open_run(path) as run, pytest.raises(UsageError, match="grad_norm, act_mean"):
        run.stat("nope")


@pytest.mark.parametrize("kind", ["missing", "text", "foreign_hdf5", "truncated", "cut_short"])
def test_open_run_rejects_bad_files_with_run_file_error(tmp_path, kind):
    path = tmp_path / "bad.h5"
    if kind == "text":
        path.write_text("not a run\n")
    elif kind == "foreign_hdf5":
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    elif kind in ("truncated", "cut_short"):
        good = tmp_path / "good.h5"
        with _writer(good) as w:
            for step in range(50):
                w.append(step, _records(1)[0])
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // (2 if kind == "truncated" else 20)])
    with pytest.raises(RunFileError, match="bad.h5"):
        with open_run(path) as run:
            run.stat("grad_norm")


def test_existing_file_needs_overwrite_or_resume(tmp_path):
    path = tmp_path / "run.h5"
    with _writer(path) as w:
        w.append(0, _records(1)[0])
    with pytest.raises(RunFileError, match="overwrite=True"):
        _writer(path)
    with pytest.raises(UsageError):
        _writer(path, overwrite=True, resume=True)
    _writer(path, overwrite=True).close()
    with open_run(path) as run:
        assert len(run.steps) == 0


def test_resume_checks_layout(tmp_path):
    path = tmp_path / "run.h5"
    _writer(path).close()
    with pytest.raises(RunFileError, match="stats"):
        RunWriter(path, layers=LAYERS, stats=["grad_norm"], resume=True)
    other = [dict(layer) for layer in LAYERS]
    other[1]["params"] = 1
    with pytest.raises(RunFileError, match="layer 1"):
        RunWriter(path, layers=other, stats=STATS, resume=True)


def test_resume_from_a_checkpoint_drops_later_steps(tmp_path):
    path = tmp_path / "run.h5"
    values = _records(12)
    with _writer(path, resume=True) as w:  # resume with no file yet creates it
        for step in range(10):
            w.append(step, values[step])
            w.log(step, {"loss": float(step)})
    with _writer(path, resume=True, start_step=6) as w:
        assert w.last_step == 5
        for step in range(6, 12):
            w.append(step, values[step] + 100)
            w.log(step, {"loss": step + 100.0})
    with open_run(path) as run:
        assert run.steps.tolist() == list(range(12))
        expected = np.concatenate([values[:6, 0], values[6:, 0] + 100])
        np.testing.assert_array_equal(run.stat("grad_norm"), expected)
        assert run.metrics["loss"].tolist() == [0, 1, 2, 3, 4, 5, 106, 107, 108, 109, 110, 111]
    with _writer(path, resume=True) as w:
        with pytest.raises(UsageError, match="start_step"):
            w.append(3, values[0])


def test_bad_appends_raise_in_the_calling_thread(tmp_path):
    w = _writer(tmp_path / "run.h5")
    with pytest.raises(UsageError, match=r"\[2, 3\]"):
        w.append(0, np.zeros((3, 3), np.float32))
    w.append(1, np.zeros((2, 3)))
    with pytest.raises(UsageError, match="increase"):
        w.append(1, np.zeros((2, 3)))
    with pytest.raises(UsageError, match="integer"):
        w.log(1.5, {"loss": 1.0})
    with pytest.raises(UsageError, match="number"):
        w.log(2, {"loss": "high"})
    w.close()
    w.close()  # idempotent
    with pytest.raises(UsageError, match="closed"):
        w.append(5, np.zeros((2, 3)))


def test_writer_thread_errors_surface_at_the_next_call(tmp_path):
    path = tmp_path / "run.h5"
    w = _writer(path)

    def broken():
        raise ValueError("device copy failed")

    w.append(0, broken)
    deadline = time.monotonic() + 5
    with pytest.raises(RunFileError, match="device copy failed"):
        while time.monotonic() < deadline:
            w.log(1, {"loss": 1.0})
            time.sleep(0.01)
    with pytest.raises(RunFileError, match="device copy failed"):
        w.close()


def test_wrong_shape_from_a_callable_is_reported_at_close(tmp_path):
    w = _writer(tmp_path / "run.h5")
    w.append(0, lambda: np.zeros((5, 5)))
    with pytest.raises(RunFileError, match="shape"):
        w.close()


def test_reader_does_not_import_torch(tmp_path):
    path = tmp_path / "run.h5"
    with _writer(path) as w:
        w.append(0, _records(1)[0])
    code = (
        "import sys, gradscope\n"
        f"run = gradscope.open_run({str(path)!r})\n"
        "run.stat('grad_norm'); run.metrics; run.to_frame()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_block_means_leave_nan_out_and_keep_a_short_last_block():
    from gradscope.store import block_means

    values = np.array([[1, np.nan], [3, np.nan], [5, 2], [np.nan, 4], [9, 6]], np.float32)
    np.testing.assert_allclose(
        block_means(values, 2), [[2, np.nan], [5, 3], [9, 6]], equal_nan=True
    )
    np.testing.assert_allclose(block_means(np.arange(7.0), 3), [1, 4, 6])
    assert block_means(values, 2).dtype == np.float32
