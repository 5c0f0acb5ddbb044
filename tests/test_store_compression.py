"""Compressed statistics: sealed chunks plus the open tail, read back whole, live and resumed."""

import os
import time

import h5py
import numpy as np

from gradscope.store import open_run
from tests.run_files import lognormal_records, open_writer

N_LAYERS = 1500  # wide enough that a compressed chunk holds 8 records: many seals, fast tests
CHUNK_ROWS = 8
STATS = ["grad_norm", "act_mean", "act_zero_frac"]
LAYERS = [{"name": f"blocks.{i}.conv", "type": "Conv2d", "params": 9 * i} for i in range(N_LAYERS)]


def _writer(path, **kwargs):
    kwargs.setdefault("flush_interval", 0.01)
    return open_writer(path, LAYERS, STATS, **kwargs)


def _records(n, seed=0):
    return lognormal_records(n, len(STATS), N_LAYERS, seed)


def _wait_for_records(run, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(run.refresh().steps) < n:
        assert time.monotonic() < deadline, f"only {len(run.steps)} of {n} records committed"
        time.sleep(0.01)


def test_closed_file_holds_every_record_in_compressed_datasets(tmp_path):
    path = tmp_path / "run.h5"
    values = _records(45)  # 5 full chunks and a partial one, sealed at close
    with _writer(path) as w:
        for step in range(45):
            w.append(step, values[step])
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        for s, name in enumerate(STATS):
            ds = f["stats"][name]
            assert (ds.compression, ds.shuffle, ds.chunks) == ("gzip", True, (8, N_LAYERS))
            assert ds.shape == (45, N_LAYERS)
            np.testing.assert_array_equal(ds[:], values[:, s])
        assert tuple(f["status"][0][["records", "sealed"]]) == (45, 45)
    with open_run(path) as run:
        np.testing.assert_array_equal(run.stat("act_mean"), values[:, 1])


def test_live_reads_merge_sealed_chunks_and_the_tail(tmp_path):
    path = tmp_path / "run.h5"
    values = _records(61, seed=3)
    values[10:14, 0, 7] = np.nan
    w = _writer(path)
    try:
        for step in range(61):
            w.append(step * 3, values[step])
        with open_run(path) as run:
            _wait_for_records(run, 61)
            with h5py.File(path, "r", libver="latest", swmr=True) as f:
                assert f["stats"]["grad_norm"].shape[0] == 56  # only sealed chunks so far
                assert f["status"][0]["sealed"] == 56
            for s, name in enumerate(STATS):
                np.testing.assert_array_equal(run.stat(name), values[:, s])
            # A window that starts in a sealed chunk and ends in the tail, block-averaged.
            steps, means = run.read("grad_norm", start_step=50 * 3, max_records=4)
            window = values[50:, 0]
            expected = [np.nanmean(window[i : i + 3], axis=0) for i in range(0, 11, 3)]
            np.testing.assert_array_equal(steps, [150, 159, 168, 177])
            np.testing.assert_allclose(means, np.array(expected), rtol=1e-6)
            frame = run.record_frame(step=59 * 3)  # a record in the tail
            np.testing.assert_array_equal(frame["act_zero_frac"].to_numpy(), values[59, 2])
    finally:
        w.close()


def test_a_flush_per_record_does_not_grow_the_file(tmp_path):
    # Compressed chunks rewritten at each flush would leak their old copies (HDF5 does not reuse
    # space under SWMR): 200 flushes would then add about 14 MB to 3.6 MB of values.
    path = tmp_path / "run.h5"
    values = _records(200, seed=5)
    with _writer(path, flush_interval=0.001) as w:
        for step in range(200):
            w.append(step, values[step])
            time.sleep(0.003)
    raw_bytes = values.nbytes
    assert os.path.getsize(path) < raw_bytes + 512 * 1024
    with open_run(path) as run:
        np.testing.assert_array_equal(run.stat("act_zero_frac"), values[:, 2])


def test_regular_statistics_compress(tmp_path):
    path = tmp_path / "run.h5"
    with _writer(path) as w:
        for step in range(240):
            w.append(step, np.full((len(STATS), N_LAYERS), 0.25, np.float32))
    raw_bytes = 240 * len(STATS) * N_LAYERS * 4
    assert os.path.getsize(path) < raw_bytes / 10


def test_resume_into_a_sealed_chunk_and_continue(tmp_path):
    # (Resuming a crashed file is tested with real SIGKILLed writers in test_store_crash.)
    path = tmp_path / "run.h5"
    values = _records(40, seed=7)
    with _writer(path) as w:
        for step in range(21):  # two sealed chunks and 5 records, sealed at close
            w.append(step, values[step])
    with _writer(path, resume=True, start_step=11) as w2:  # back into the second sealed chunk
        assert w2.last_step == 10
        for step in range(11, 40):
            w2.append(step, values[step] + 1000)
    expected = np.concatenate([values[:11], values[11:] + 1000])
    with open_run(path) as run:
        assert run.steps.tolist() == list(range(40))
        for s, name in enumerate(STATS):
            np.testing.assert_array_equal(run.stat(name), expected[:, s])
    with _writer(path, resume=True) as w3:  # resume where the file ends: a partial chunk
        w3.append(40, values[0])
    with open_run(path) as run:
        np.testing.assert_array_equal(run.stat("grad_norm")[-2:], [expected[39, 0], values[0, 0]])


def test_format_1_files_are_read_and_resumed(tmp_path):
    # Format 1 had no stats_tail and no `sealed` count: every record was in `stats/*`.
    path = tmp_path / "old.h5"
    values = _records(12, seed=9)
    with _writer(path) as w:
        for step in range(12):
            w.append(step, values[step])
    with h5py.File(path, "r+", libver="latest") as f:
        del f["stats_tail"]
        status = f["status"][0]
        del f["status"]
        old_dtype = np.dtype(
            [("closed", "u1"), ("heartbeat", "<f8"), ("records", "<i8"), ("metrics", "<i8")]
        )
        f.create_dataset("status", data=np.array([status[list(old_dtype.names)]], old_dtype))
        f.attrs["format_version"] = 1
    with open_run(path) as run:
        np.testing.assert_array_equal(run.stat("act_mean"), values[:, 1])
    with _writer(path, resume=True) as w:
        w.append(12, values[0])
    with open_run(path) as run:
        assert run.attrs["format_version"] == 3
        np.testing.assert_array_equal(run.stat("act_mean")[:12], values[:, 1])
        np.testing.assert_array_equal(run.stat("act_mean")[12], values[0, 1])


def test_format_2_files_are_read_and_resumed(tmp_path):
    # Format 2's status had no dropped counts and no write error.
    path = tmp_path / "v2.h5"
    values = _records(12, seed=4)
    with _writer(path) as w:
        for step in range(12):
            w.append(step, values[step])
    with h5py.File(path, "r+", libver="latest") as f:
        status = f["status"][0]
        del f["status"]
        names = ["closed", "heartbeat", "records", "metrics", "sealed"]
        old_dtype = np.dtype([(name, status.dtype[name]) for name in names])
        f.create_dataset("status", data=np.array([status[names]], old_dtype))
        f.attrs["format_version"] = 2
    with open_run(path) as run:
        assert (run.dropped_records, run.dropped_metrics, run.write_error) == (0, 0, None)
        assert run.closed
        np.testing.assert_array_equal(run.stat("grad_norm"), values[:, 0])
    with _writer(path, resume=True) as w:
        w.append(12, values[0])
    with open_run(path) as run:
        assert run.attrs["format_version"] == 3 and run.write_error is None
        np.testing.assert_array_equal(run.stat("grad_norm")[12], values[0, 0])
