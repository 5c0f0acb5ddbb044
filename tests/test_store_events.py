"""The run file's events (format 3): written, read back, cut on resume; format 2 still opens."""

import h5py
import numpy as np
import pandas as pd
import pytest

from gradscope.errors import UsageError
from gradscope.store import _schema as schema
from gradscope.store import open_run
from tests.run_files import LAYERS, STATS, open_writer

ORIGIN = {
    "step": 7,
    "kind": "nonfinite",
    "phase": "forward",
    "layer": "layer1.0.bn1",
    "rank": None,
    "micro_batch": 2,
    "micro_batches": 3,
    "update": "applied",
    "recorded": True,
    "op": "aten.native_batch_norm",
    "op_dtype": "float16",
    "op_shape": "[8, 16, 4, 4]",
    "op_absmax": 3.4e38,
    "message": "step 7: first non-finite value in the forward pass of layer1.0.bn1",
}


def write(path, steps, events, **kwargs):
    with open_writer(path, LAYERS, STATS, **kwargs) as w:
        for step in steps:
            w.append(step, np.ones((len(STATS), len(LAYERS)), np.float32))
        for event in events:
            w.event(event)


def test_events_round_trip_with_text_cut_to_fit(tmp_path):
    path = tmp_path / "run.h5"
    overflow = {"step": 3, "kind": "amp_overflow", "update": "skipped"}
    long_message = "é" * 400  # 800 bytes of UTF-8: cut on a character boundary
    write(path, range(10), [overflow, ORIGIN, {**ORIGIN, "step": 9, "message": long_message}])
    with open_run(path) as run:
        assert run.attrs["format_version"] == schema.FORMAT_VERSION == 3
        events = run.events
    assert list(events["kind"]) == ["amp_overflow", "nonfinite", "nonfinite"]
    assert list(events["step"]) == [3, 7, 9]
    first = events.iloc[0]
    assert first["phase"] is None and first["layer"] is None and first["op"] is None
    assert np.isnan(first["op_absmax"]) and not first["recorded"]
    origin = events.iloc[1]
    for key in ("phase", "layer", "update", "op", "op_dtype", "op_shape", "message", "recorded"):
        assert origin[key] == ORIGIN[key], key
    assert origin["micro_batch"] == 2 and origin["micro_batches"] == 3
    assert origin["rank"] is pd.NA
    assert origin["op_absmax"] == pytest.approx(3.4e38)
    assert events.iloc[2]["message"] == "é" * 256  # 512 bytes


def test_bad_events_are_refused_at_once(tmp_path):
    with open_writer(tmp_path / "run.h5", LAYERS, STATS) as w:
        with pytest.raises(UsageError, match="not a layer of this run"):
            w.event({**ORIGIN, "layer": "nope"})
        with pytest.raises(UsageError, match="event kind"):
            w.event({"step": 1, "kind": "boom"})
        with pytest.raises(UsageError, match="unknown event field"):
            w.event({"step": 1, "kind": "nonfinite", "colour": "red"})


def test_resume_from_a_step_drops_the_events_at_and_after_it(tmp_path):
    path = tmp_path / "run.h5"
    write(path, range(10), [{**ORIGIN, "step": s} for s in (2, 5, 8)])
    write(path, range(5, 7), [{**ORIGIN, "step": 6}], resume=True, start_step=5)
    with open_run(path) as run:
        assert list(run.events["step"]) == [2, 6]
        assert list(run.steps) == [0, 1, 2, 3, 4, 5, 6]


def as_format_2(path):
    """Turn a format-3 file into the format-2 layout: no `events`, no `status.events`."""
    with h5py.File(path, "r+", libver="latest") as f:
        del f["events"]
        status = f["status"][0]
        del f["status"]
        old = np.dtype([(name, schema.STATUS_DTYPE[name]) for name in schema.STATUS_DTYPE.names])
        old = np.dtype([(n, old[n]) for n in old.names if n != "events"])
        f.create_dataset("status", data=np.array([status[list(old.names)]], old))
        f.attrs["format_version"] = 2


def test_a_file_of_format_2_opens_and_resumes_as_format_3(tmp_path):
    path = tmp_path / "old.h5"
    write(path, range(4), [])
    as_format_2(path)
    with open_run(path) as run:
        assert run.attrs["format_version"] == 2
        assert list(run.steps) == [0, 1, 2, 3]
        assert run.events.empty and list(run.events.columns) == list(schema.EVENT_DTYPE.names)
    write(path, [4], [ORIGIN | {"step": 4}], resume=True)
    with open_run(path) as run:
        assert run.attrs["format_version"] == 3
        assert list(run.steps) == [0, 1, 2, 3, 4]
        assert list(run.events["step"]) == [4]
