"""`gradscope record` on two ranks: the global batch sliced per rank, torchrun end to end,
Ctrl-C and resume across ranks, a rank killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradscope
from gradscope.cli import main
from gradscope.data import TrainBatches, load_dataset
from gradscope.errors import UsageError
from gradscope.models import create_model, get_model_spec
from gradscope.recorder import ALL_STATS
from gradscope.train import TrainConfig, check_train_config
from gradscope.train._checkpoint import load_checkpoint
from tests.reference import (
    ReferenceProbe,
    act_grad_reference,
    act_reference,
    gns_reference,
    grad_reference,
    gradient_change,
    outlier_ties,
    parameter_grads,
    unit_reference,
    weight_copy,
    weight_reference,
)

TINY = ["--data", "synthetic", "--image-size", "8", "--device", "cpu", "--quiet"]
RUN_TIMEOUT = 300  # seconds for a whole multi-process run on a busy 2-core machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PAIR_STEPS, PAIR_EVERY, PAIR_BATCH = 80, 20, 16


def gradscope_cli(*args, env=ENV, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "gradscope", *args]
    return subprocess.Popen(command, text=True, env=env, **kwargs)


def wait_for_record(path: Path, proc: subprocess.Popen) -> None:
    """Until the run file at `path` holds a record (the ranks are training)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it was interrupted"
        if path.exists():
            try:
                with gradscope.open_run(path) as run:
                    if len(run.steps):
                        return
            except gradscope.RunFileError:
                pass  # not written far enough yet
        time.sleep(0.2)
    raise AssertionError(f"no record in {path} within {RUN_TIMEOUT} s")


def rank_process(launcher: int, rank: int) -> int:
    """The pid of the worker of `rank` among the launcher's children (Linux /proc)."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(child)
    raise AssertionError(f"no rank {rank} under process {launcher}")


def test_rank_batches_split_the_global_batch():
    dataset = load_dataset("synthetic", device="cpu", image_size=8)
    batches = TrainBatches(dataset, batch_size=12, seed=3)
    for step in (0, 5):
        x, y = batches.batch(step)
        for world in (2, 3, 4):
            parts = [batches.rank_batch(step, rank, world) for rank in range(world)]
            torch.testing.assert_close(torch.cat([p[0] for p in parts]), x, rtol=0, atol=0)
            torch.testing.assert_close(torch.cat([p[1] for p in parts]), y, rtol=0, atol=0)
    with pytest.raises(UsageError, match="cannot be split evenly over 5 ranks"):
        batches.rank_batch(0, 0, 5)


def test_config_checks_for_several_ranks():
    with pytest.raises(UsageError, match="split evenly over the 3 ranks"):
        check_train_config(TrainConfig(batch_size=128, world_size=3, device="cpu"))
    with pytest.raises(UsageError, match="--sync-bn: torch's SyncBatchNorm runs on CUDA"):
        check_train_config(TrainConfig(sync_bn=True, device="cpu"))


def test_launcher_checks_flags_before_starting_ranks(tmp_path, capsys):
    flags = ["--model", "resnet20", *TINY, "--batch-size", "16", "--steps", "2"]
    assert main(["record", *flags, "--nproc-per-node", "3", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "gradscope record: error: --batch-size 16 is the global batch: it must split evenly "
        "over the 3 ranks"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("named", [True, False])
def test_the_launcher_names_the_experiment_it_starts(tmp_path, monkeypatch, named):
    # The ranks get the experiment's name from the launcher, which so knows the folder that a
    # failed run resumes from (torchrun itself is not started here).
    started = {}
    monkeypatch.setattr(
        "gradscope.cli.record_cmd.launch_ranks",
        lambda world, command, run_dir: started.update(command=command, run_dir=run_dir) or 0,
    )
    flags = ["--model", "resnet20", *TINY, "--batch-size", "16", "--steps", "2"]
    flags += ["--out", str(tmp_path), *(["--name", "mine"] if named else [])]
    assert main(["record", *flags, "--nproc-per-node", "2"]) == 0
    command = started["command"]
    assert command[0] == "record" and "--nproc-per-node" not in command
    assert command.count("--name") == 1
    name = command[command.index("--name") + 1]
    assert name == "mine" if named else len(name) == len("20261201-163000")
    assert started["run_dir"] == tmp_path / name


def interrupt_at_first_line(proc: subprocess.Popen, model: str, send) -> tuple[str, str]:
    """Read `proc`'s progress lines until `model` trains, then `send(proc)` the stop signal;
    (stdout, stderr) once it ended."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"{model} step "):
            break
    else:
        raise AssertionError(f"{model} never trained: {''.join(seen)}")
    send(proc)
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    return "".join(seen) + out, err


def sigterm_everywhere(proc: subprocess.Popen) -> None:
    """What a scheduler (Slurm) does: SIGTERM to the launcher and to each rank."""
    ranks = [rank_process(proc.pid, rank) for rank in range(2)]
    proc.send_signal(signal.SIGTERM)
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A resnet20/plain20 pair on two ranks: started with `--nproc-per-node 2` and stopped by
    Ctrl-C while resnet20 trains; resumed the same way and stopped by SIGTERM (to the launcher
    and every rank, as a scheduler sends it) while plain20 trains; then finished by
    `torchrun -m gradscope record --resume`. The first two print progress lines (their output
    is a pipe), one a step, which say when each model trains."""
    out = tmp_path_factory.mktemp("pair")
    run_dir = out / "pair"
    flags = ["--model", "resnet20", "--baseline", "plain20", *TINY[:-1]]  # not --quiet
    flags += ["--batch-size", str(PAIR_BATCH), "--steps", str(PAIR_STEPS)]
    # one evaluation at step 40 on 500 images, one batch: rank 1 has none (and must not wait)
    flags += ["--every", str(PAIR_EVERY), "--eval-every", "40", "--eval-subset", "500"]
    flags += ["--out", str(out), "--name", "pair"]
    lines = {"env": {**ENV, "GRADSCOPE_PROGRESS_SECONDS": "0"}}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    first = gradscope_cli("record", *flags, "--nproc-per-node", "2", **pipes, **lines)
    try:  # what Ctrl-C in a terminal sends the launcher
        stopped_out, stopped_err = interrupt_at_first_line(
            first, "resnet20", lambda proc: proc.send_signal(signal.SIGINT)
        )
    finally:
        first.kill()
    stopped_at = load_checkpoint(run_dir / "resnet20.ckpt.pt")
    second = gradscope_cli(
        "record", "--resume", str(run_dir), "--nproc-per-node", "2", **pipes, **lines
    )
    try:
        terminated_out, terminated_err = interrupt_at_first_line(
            second, "plain20", sigterm_everywhere
        )
    finally:
        second.kill()
    terminated_at = load_checkpoint(run_dir / "plain20.ckpt.pt")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "gradscope", "record", "--resume", str(run_dir), "--quiet",
    ]  # fmt: skip
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=RUN_TIMEOUT)
    return SimpleNamespace(
        run_dir=run_dir,
        stopped=SimpleNamespace(code=first.returncode, out=stopped_out, err=stopped_err),
        stopped_at=stopped_at,
        terminated=SimpleNamespace(code=second.returncode, out=terminated_out, err=terminated_err),
        terminated_at=terminated_at,
        resumed=resumed,
    )


def test_ctrl_c_stops_every_rank_after_one_step(pair):
    assert pair.stopped.code == 130, pair.stopped.err
    assert "train loss" not in pair.stopped.out  # no summary of an interrupted run
    assert pair.stopped.err.count("resume with:") == 1  # rank 0 says it, rank 1 does not
    assert f"gradscope record --resume {pair.run_dir} --nproc-per-node 2" in pair.stopped.err
    assert 0 < pair.stopped_at["step"] < PAIR_STEPS and not pair.stopped_at["done"]


def test_sigterm_to_the_launcher_and_every_rank_stops_them_after_one_step(pair):
    assert pair.terminated.code == 130, pair.terminated.err
    assert "train loss" not in pair.terminated.out
    step = pair.terminated_at["step"]
    assert 0 < step < PAIR_STEPS and not pair.terminated_at["done"]
    assert pair.terminated.err.count("resume with:") == 1  # SIGTERM twice is still one stop
    assert (
        f"stopped by SIGTERM (plain20 checkpointed at step {step}); resume with:\n"
        f"  gradscope record --resume {pair.run_dir} --nproc-per-node 2"
    ) in pair.terminated.err
    assert f"resnet20 step {PAIR_STEPS}/{PAIR_STEPS}" in pair.terminated.out  # finished first
    assert load_checkpoint(pair.run_dir / "resnet20.ckpt.pt")["done"]


def test_torchrun_resume_completes_the_pair_with_the_plain_models_layer_names(pair):
    assert pair.resumed.returncode == 0, pair.resumed.stderr
    assert pair.resumed.stderr == ""  # neither rank prints anything but errors
    assert pair.resumed.stdout.count("train loss") == 2  # one summary (header, footnote)
    assert pair.resumed.stdout.count(f"{PAIR_STEPS}/{PAIR_STEPS}") == 2
    names = {"config.json", "resnet20.h5", "plain20.h5", "resnet20.ckpt.pt", "plain20.ckpt.pt"}
    assert {p.name for p in pair.run_dir.iterdir()} == names  # no per-rank files
    assert json.loads((pair.run_dir / "config.json").read_text())["train"]["world_size"] == 2
    for model in ("resnet20", "plain20"):
        plain = create_model(model)
        with gradscope.open_run(pair.run_dir / f"{model}.h5") as run:
            assert run.closed
            assert list(run.layers["name"]) == [
                name
                for name, m in plain.named_modules()
                if next(m.parameters(recurse=False), None) is not None
            ]
            assert run.attrs["world_size"] == 2 and run.attrs["data_parallel"] == "DDP"
            np.testing.assert_array_equal(run.steps, range(0, PAIR_STEPS, PAIR_EVERY))
            assert list(run.metrics.index) == list(range(PAIR_STEPS))
            # an intermediate evaluation on a subset, the last on the whole test set
            assert run.metrics["test_images"].dropna().tolist() == [500, 1000]
            for stat in ALL_STATS:
                assert np.isfinite(run.stat(stat)).all(), stat
        assert load_checkpoint(pair.run_dir / f"{model}.ckpt.pt")["done"]


def test_resume_on_another_number_of_ranks_says_how_to_resume(pair, capsys):
    assert main(["record", "--resume", str(pair.run_dir), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gradscope record: error: {pair.run_dir} trained on 2 processes (torchrun ranks), not "
        f"1; resume it on as many (gradscope record --resume {pair.run_dir} --nproc-per-node 2), "
        "so that BatchNorm sees the same slices and the numbers continue as an uninterrupted run"
    )


# float32 rounding grows through the plain net's 19 BatchNorms without shortcuts: one float32
# process differs from float64 by 1e-3 in the first layers' gradients (2e-2 in their means),
# so plain20's reference computes in float32 like the ranks, resnet20's in float64
@pytest.mark.parametrize("model, dtype", [("resnet20", torch.float64), ("plain20", torch.float32)])
def test_step_zero_is_ddp_on_the_global_batch_from_one_initialization(pair, model, dtype):
    """Every statistic of step 0 against one process computing what DDP computes: the same
    initialization, rank r's slice of global batch 0 through the model on its own (BatchNorm
    normalizes each rank's slice), the loss the mean of the ranks' losses, then SGD."""
    config = TrainConfig(batch_size=PAIR_BATCH)
    dataset = load_dataset("synthetic", device="cpu", image_size=8)
    torch.manual_seed(config.seed)
    shortcut = {"shortcut": config.shortcut} if get_model_spec(model).shortcuts else {}
    net = create_model(model, num_classes=dataset.num_classes, **shortcut).to(dtype)
    layers = {
        n: m for n, m in net.named_modules() if next(m.parameters(recurse=False), None) is not None
    }
    probe = ReferenceProbe(layers)
    opt = torch.optim.SGD(
        net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    batches = TrainBatches(dataset, batch_size=config.batch_size, seed=config.seed)
    slices = [batches.rank_batch(0, rank, 2) for rank in range(2)]
    losses = [F.cross_entropy(net(x.to(dtype)), y) for x, y in slices]
    changes = []  # each rank's share of the gradient: the small batches of the noise scale
    for loss in losses:
        grads_before = parameter_grads(net)
        (loss / 2).backward()
        changes.append(gradient_change(net, grads_before))
    noise = gns_reference(layers, changes, [len(x) for x, _ in slices])
    before = {name: weight_copy(m) for name, m in layers.items()}
    grads = {name: grad_reference(m) for name, m in layers.items()}
    opt.step()
    want = {
        name: {
            **grads[name],
            **weight_reference(before[name], m),
            **act_reference(probe.outputs[name], None),
            **unit_reference(probe.outputs[name], None, m),
            "act_grad_norm": act_grad_reference(probe.outputs[name]),
            **noise[name],
        }
        for name, m in layers.items()
    }
    with gradscope.open_run(pair.run_dir / f"{model}.h5") as run:
        names = run.layers["name"]
        for name, channel in zip(names, run.stat("act_outlier_channel")[0], strict=True):
            if channel in outlier_ties(probe.outputs[name], None, layers[name]):  # float32 tie
                want[name]["act_outlier_channel"] = channel
        assert run.metrics["lr"][0] == config.lr
        assert run.metrics["loss"][0] == pytest.approx(sum(losses).item() / 2, rel=1e-5)
        for stat in ALL_STATS:
            np.testing.assert_allclose(
                run.stat(stat)[0],
                [want[name][stat] for name in run.layers["name"]],
                rtol=1e-4,
                atol=1e-6,
                err_msg=f"{model} step 0 {stat}",
            )


def test_a_killed_rank_stops_the_others_with_an_error(tmp_path):
    flags = ["--model", "resnet20", *TINY, "--batch-size", "8", "--steps", "5000"]
    flags += ["--every", "1", "--out", str(tmp_path), "--name", "kill"]
    proc = gradscope_cli("record", *flags, "--nproc-per-node", "2", stderr=subprocess.PIPE)
    try:
        wait_for_record(tmp_path / "kill" / "resnet20.h5", proc)
        survivor = rank_process(proc.pid, 0)
        os.kill(rank_process(proc.pid, 1), signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - killed < 60
    assert proc.returncode == 1
    assert "gradscope record: error: rank 1 was killed by SIGKILL; torchrun stopped" in err
    assert f"`gradscope record --resume {tmp_path / 'kill'} --nproc-per-node 2`" in err
    assert not Path(f"/proc/{survivor}").exists() or "Z" in _state(survivor)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
