"""Fixtures shared by the test modules."""

import subprocess
import sys
import time

import pytest

from gradscope.store import open_run

# A writer that records 40 steps of 300 layers, then keeps the file open (a live run).
LIVE_WRITER_SCRIPT = r"""
import sys, time
import numpy as np
from gradscope.store import RunWriter

layers = [{"name": f"block{i}.conv", "type": "Conv2d", "params": 9} for i in range(300)]
w = RunWriter(sys.argv[1], layers, ["grad_norm", "act_mean", "act_grad_norm"], flush_interval=0.02)
for step in range(40):
    w.append(step, np.full((3, 300), step + 1.0, np.float32))
    w.log(step, {"loss": 1.0 / (step + 1)})
print("ready", flush=True)
time.sleep(120)
"""
LIVE_RECORDS = 40
CUT_FRACTIONS = (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98)


@pytest.fixture(scope="session")
def cut_live_runs(tmp_path_factory) -> list:
    """Copies of a run still being written (SWMR, open for writing), cut at several sizes."""
    folder = tmp_path_factory.mktemp("cut_live")
    path = folder / "live.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while True:  # until every record is committed
            with open_run(path) as run:
                if len(run.steps) == LIVE_RECORDS:
                    assert run.is_live
                    break
            assert time.monotonic() < deadline, "the live writer did not commit its records"
            time.sleep(0.05)
        data = path.read_bytes()
    finally:
        proc.kill()
        proc.wait()
    cuts = []
    for fraction in CUT_FRACTIONS:
        cut = folder / f"cut{fraction}.h5"
        cut.write_bytes(data[: int(len(data) * fraction)])
        cuts.append(cut)
    return cuts


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine, OpenMP spin-waits make 2 threads far slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def probe_runs(tmp_path_factory):
    """A runs folder holding probe files: a small ResNet and its plain twin at initialization
    (runs/probes/), and a width sweep of an MLP (runs/sweep/sp_mlp.h5); plus one training run."""
    import torch

    import gradscope
    from gradscope.models import create_model
    from tests.probe_models import mlp_batches, sp_mlp, sp_sgd
    from tests.run_files import write_twin

    root = tmp_path_factory.mktemp("probes") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("resnet20", "plain20"):
            torch.manual_seed(0)
            model = create_model(name, width=4)
            path = root / "probes" / f"{name}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            gradscope.probe(model, batch_size=4, path=path, name=name).close()
        sweep = root / "sweep" / "sp_mlp.h5"
        sweep.parent.mkdir(parents=True, exist_ok=True)
        gradscope.probe(
            sp_mlp, mlp_batches(), steps=2, widths=[32, 64, 128], optimizer=sp_sgd(1.0), path=sweep
        ).close()
    finally:
        torch.set_num_threads(threads)
    write_twin(root / "demo" / "resnet56.h5", "resnet56")
    return root
