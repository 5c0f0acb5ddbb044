"""The CUDA-only branches: no host sync on any step (but the flight recorder's one flag read),
pinned non-blocking record copies, bf16 autocast and channels_last in the trainer, a replay with
the device's generator. Skipped without CUDA (scripts/gpu-check.sh runs them); their CPU twins
are tested against the brute-force reference in test_act_sums/test_recorder/test_nonfinite."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradscope
from gradscope.recorder import ALL_STATS
from tests.test_nonfinite import BREAK_AT, Net, batch, break_at
from tests.test_recorder import SmallCNN, image_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def train(
    model, path, steps, every, device, kernels_env, monkeypatch, sync_check=None, nonfinite="watch"
):
    """Train `model` on `device` for `steps` steps, recording into `path`; return the run.
    `sync_check`: torch.cuda's sync debug mode from the first step on ("error" or "warn")."""
    monkeypatch.setenv("GRADSCOPE_KERNELS", kernels_env)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = [tuple(t.to(device) for t in image_batch(step)) for step in range(steps)]
    rec = gradscope.attach(
        model, path, optimizer=opt, every=every, batch_sample=None, nonfinite=nonfinite
    )
    if sync_check:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(sync_check)
    try:
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            rec.log(lr=0.1)  # a float: no sync
    finally:
        torch.cuda.set_sync_debug_mode("default")
    rec.close()
    return gradscope.open_run(path)


def test_no_host_sync_on_any_step_recorded_or_not(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = SmallCNN(inplace=False)
    run = train(model, tmp_path / "r.h5", 6, 2, "cuda", "auto", monkeypatch, "error", "off")
    assert list(run.steps) == [0, 2, 4]
    for stat in ALL_STATS:
        values = run.stat(stat)
        assert values.shape == (3, len(run.layers)), stat


def test_the_non_finite_watch_reads_one_flag_a_step(tmp_path, monkeypatch):
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(SmallCNN(inplace=False), tmp_path / "r.h5", 6, 2, "cuda", "auto", monkeypatch, "warn")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 6  # the flag's read, once a step, recorded or not


def test_a_trip_on_cuda_is_replayed_with_the_device_generator(tmp_path):
    torch.manual_seed(0)
    model = Net("forward", drop=0.5).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.h5"
    with gradscope.attach(model, path, optimizer=opt, every=50, nonfinite="skip"):
        for step in range(BREAK_AT + 1):
            x, y = batch(step)
            x = break_at()(step, 0, x.cuda())
            F.cross_entropy(model(x), y.cuda()).backward()
            state = torch.cuda.get_rng_state()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                opt.step()
            assert torch.equal(torch.cuda.get_rng_state(), state)
            opt.zero_grad()
    origin = gradscope.open_run(path).events.iloc[0]
    assert (origin["phase"], origin["layer"], origin["op"]) == ("forward", "brk", "aten.mul")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cuda_records_equal_the_cpu_ones(tmp_path, monkeypatch):
    # The CPU run is checked against brute force elsewhere; the CUDA run (the device path,
    # pinned non-blocking copies of each record) must give the same numbers.
    torch.manual_seed(0)
    model = SmallCNN(inplace=True)
    twin = SmallCNN(inplace=True)
    twin.load_state_dict(model.state_dict())
    on_cuda = train(model, tmp_path / "cuda.h5", 3, 1, "cuda", "auto", monkeypatch)
    on_cpu = train(twin, tmp_path / "cpu.h5", 3, 1, "cpu", "auto", monkeypatch)
    for stat in ALL_STATS:
        np.testing.assert_allclose(
            on_cuda.stat(stat), on_cpu.stat(stat), rtol=2e-3, atol=1e-6, err_msg=stat
        )


def test_trainer_on_cuda_uses_bf16_autocast_and_channels_last(tmp_path):
    from gradscope.data import load_dataset
    from gradscope.train import TrainConfig, Trainer

    dataset = load_dataset("synthetic", image_size=8, device="cuda")
    config = TrainConfig(
        data="synthetic", image_size=8, steps=4, batch_size=16, eval_every=4, record_every=1,
        device="cuda",
    )  # fmt: skip
    with Trainer("resnet20", config, dataset, tmp_path, progress=False) as trainer:
        assert trainer.amp  # on by default on CUDA
        assert trainer.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        result = trainer.run()
    assert result.finished and np.isfinite(result.train_loss)
    with gradscope.open_run(tmp_path / "resnet20.h5") as run:
        for stat in ("grad_norm", "act_mean", "act_grad_norm", "update_ratio"):
            assert np.isfinite(run.stat(stat)).all(), stat


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_a_compiled_model_on_cuda_records_what_eager_records(tmp_path, monkeypatch, kernels):
    # inductor's Triton code with gradscope's ops in the graph, against the eager CUDA run
    torch.manual_seed(0)
    model = SmallCNN(inplace=True)
    twin = SmallCNN(inplace=True)
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(model.cuda(), fullgraph=True)
    runs = []
    for net, forward, name in ((model, compiled, "c.h5"), (twin.cuda(), twin, "e.h5")):
        monkeypatch.setenv("GRADSCOPE_KERNELS", kernels)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        with gradscope.attach(net, tmp_path / name, optimizer=opt, every=2, batch_sample=None):
            for step in range(4):
                x, y = (t.cuda() for t in image_batch(step))
                F.cross_entropy(forward(x), y).backward()
                opt.step()
                opt.zero_grad()
        runs.append(gradscope.open_run(tmp_path / name))
    assert list(runs[0].steps) == [0, 2]
    for stat in ALL_STATS:
        np.testing.assert_allclose(
            runs[0].stat(stat), runs[1].stat(stat), rtol=1e-3, atol=1e-6, err_msg=stat
        )
