"""Long runs: recording every step does not grow the process by the record (benchmarks/longrun.py
measures resident memory over 50,000 steps)."""

import gc
import time
import tracemalloc

import pytest
import torch
from torch import nn

import gradscope

pytestmark = pytest.mark.usefixtures("one_thread")

# records before tracing, traced before measuring (torch's and our caches fill), and measured;
# objects in flight when it is measured (records queued for the writer) come to about 10 kB, so
# the window is long enough that they stay well under the bound
WARMUP, TRACED_WARMUP, MEASURED = 300, 200, 3000
MAX_BYTES_PER_RECORD = 16  # a float kept per record is 24 bytes, a list slot 8


def settled(writer) -> int:
    """Python memory in use once the writer has written everything queued."""
    deadline = time.monotonic() + 30
    while not writer._queue.empty() or writer._pending_records or writer._pending_metrics:
        assert time.monotonic() < deadline, "the writer did not catch up"
        time.sleep(0.005)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_python_memory_does_not_grow_with_records(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    rec = gradscope.attach(model, tmp_path / "run.h5", optimizer=opt, flush_interval=0.01)

    def train(steps):
        for _ in range(steps):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.log(loss=loss.item())

    train(WARMUP)
    # HDF5's memory is not Python's: the writer keeps no chunk cache, which grew the process
    # by about 1.6 kB a record (docs/run-file.md, "Memory")
    assert rec._writer._file.id.get_access_plist().get_cache()[2] == 0
    tracemalloc.start()
    try:
        train(TRACED_WARMUP)
        before = settled(rec._writer)
        train(MEASURED)
        growth = settled(rec._writer) - before
    finally:
        tracemalloc.stop()
        rec.close()
    assert growth / MEASURED < MAX_BYTES_PER_RECORD, f"{growth / MEASURED:.1f} bytes per record"
    with gradscope.open_run(tmp_path / "run.h5") as run:
        assert len(run.steps) == WARMUP + TRACED_WARMUP + MEASURED
