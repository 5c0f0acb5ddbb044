"""The training loop: step plan, lr schedule, run-file logging, checkpoints, exact resume."""

import signal

import numpy as np
import pandas as pd
import pytest
import torch

import gradscope
from gradscope.data import load_dataset
from gradscope.data._synthetic import SYNTHETIC_TEST
from gradscope.errors import UsageError
from gradscope.train import TrainConfig, Trainer, check_train_config, plan_steps, resolve_device
from gradscope.train._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gradscope.train._config import build_lr_scheduler
from gradscope.train._interrupt import DeferredInterrupt, sigterm_as_ctrl_c
from gradscope.train._progress import ProgressLines, line_interval

STEPS = 8  # steps of the tiny runs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("synthetic", image_size=8)


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(
        data="synthetic",
        image_size=8,
        steps=STEPS,
        batch_size=16,
        eval_every=4,
        checkpoint_every=3,
        record_every=2,
        device="cpu",
        eval_subset=SYNTHETIC_TEST // 2,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def train(dataset, run_dir, model="resnet20", stop_at_step=None, resume=False, **overrides):
    with Trainer(
        model,
        tiny_config(**overrides),
        dataset,
        run_dir,
        resume=resume,
        attrs={"synthetic": True},
        progress=False,
    ) as trainer:
        result = trainer.run(stop_at_step)
        state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return result, state


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result, state = train(dataset, run_dir)
    return run_dir, result, state


def read_run(path):
    with gradscope.open_run(path) as run:
        stats = {name: run.stat(name) for name in ("grad_norm", "act_grad_norm", "update_ratio")}
        return run.steps.copy(), run.metrics.copy(), stats, dict(run.attrs)


def assert_same_run(path_a, path_b):
    steps_a, metrics_a, stats_a, _ = read_run(path_a)
    steps_b, metrics_b, stats_b, _ = read_run(path_b)
    np.testing.assert_array_equal(steps_a, steps_b)
    pd.testing.assert_frame_equal(metrics_a, metrics_b)
    for name in stats_a:
        np.testing.assert_array_equal(stats_a[name], stats_b[name], err_msg=name)


def assert_same_weights(state_a, state_b):
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


# ----- plan and schedule ----------------------------------------------------------------------


def test_default_plan_is_the_paper_recipe():
    config = TrainConfig()
    plan = plan_steps(config, steps_per_epoch=390)
    assert (config.batch_size, config.lr, config.momentum, config.weight_decay) == (
        128,
        0.1,
        0.9,
        1e-4,
    )
    assert plan.total_steps == 64_000 and plan.milestones == (32_000, 48_000)
    assert plan.eval_every == 390 and plan.checkpoint_every == 390


def test_steps_and_epochs_put_milestones_at_half_and_three_quarters():
    plan = plan_steps(TrainConfig(steps=100), steps_per_epoch=390)
    assert plan.total_steps == 100 and plan.milestones == (50, 75)
    assert plan.eval_every == 10  # short runs evaluate about ten times, not once
    plan = plan_steps(TrainConfig(epochs=4), steps_per_epoch=50)
    assert plan.total_steps == 200 and plan.milestones == (100, 150)
    assert plan.eval_every == 50  # --epochs runs evaluate every epoch


def test_lr_warmup_then_step_decay():
    config = TrainConfig(steps=8, warmup_steps=2, lr=0.1)
    plan = plan_steps(config, steps_per_epoch=100)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_lr_scheduler(optimizer, plan, config)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(rates, [0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"steps": 0}, "--steps"),
        ({"steps": 10, "epochs": 2}, "not both"),
        ({"epochs": -1}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": 0.0}, "--lr"),
        ({"record_every": 0}, "--every"),
        ({"shortcut": "C"}, "--shortcut"),
        ({"device": "tpu"}, "--device"),
    ],
)
def test_bad_settings_are_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message):
        check_train_config(TrainConfig(**overrides))


def test_warmup_longer_than_run_is_rejected():
    with pytest.raises(UsageError, match="--warmup-steps"):
        plan_steps(TrainConfig(steps=5, warmup_steps=5), steps_per_epoch=10)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")


# ----- the loop -------------------------------------------------------------------------------


def test_run_file_holds_every_step_the_lr_and_test_error(uninterrupted):
    run_dir, result, _ = uninterrupted
    steps, metrics, stats, attrs = read_run(run_dir / "resnet20.h5")
    np.testing.assert_array_equal(steps, [0, 2, 4, 6])  # record_every=2
    assert list(metrics.index) == list(range(STEPS))
    assert np.isfinite(metrics[["loss", "error", "lr"]].to_numpy()).all()
    assert ((metrics["error"] >= 0) & (metrics["error"] <= 1)).all()
    np.testing.assert_allclose(metrics["lr"], [0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    evaluated = metrics["test_error"].dropna()
    assert list(evaluated.index) == [3, 7]  # after 4 and 8 steps
    assert result.test_error == evaluated.iloc[-1]
    # the intermediate evaluation on the fixed subset, the last one on the whole test set
    test_count = SYNTHETIC_TEST
    assert list(metrics["test_images"].dropna()) == [test_count / 2, test_count]
    assert (result.test_images, result.test_set_size) == (test_count, test_count)
    assert np.isfinite(stats["act_grad_norm"]).all() and (stats["act_grad_norm"] > 0).all()
    assert attrs["synthetic"] is True or attrs["synthetic"] == 1
    assert result.finished and result.steps_done == STEPS
    assert result.train_loss == pytest.approx(metrics["loss"].mean())
    checkpoint = load_checkpoint(run_dir / "resnet20.ckpt.pt")
    assert checkpoint["done"] and checkpoint["step"] == STEPS


def test_same_command_gives_the_same_numbers(dataset, uninterrupted, tmp_path):
    run_dir, result, state = uninterrupted
    again, again_state = train(dataset, tmp_path)
    assert again.train_loss == result.train_loss and again.test_error == result.test_error
    assert_same_weights(state, again_state)
    assert_same_run(run_dir / "resnet20.h5", tmp_path / "resnet20.h5")


def test_resume_after_a_pause_matches_an_uninterrupted_run(dataset, uninterrupted, tmp_path):
    run_dir, result, state = uninterrupted
    paused, _ = train(dataset, tmp_path, stop_at_step=5)
    assert not paused.finished and load_checkpoint(tmp_path / "resnet20.ckpt.pt")["step"] == 5
    resumed, resumed_state = train(dataset, tmp_path, resume=True)
    assert resumed.finished and resumed.steps_done == STEPS
    assert (resumed.train_loss, resumed.test_error) == (result.train_loss, result.test_error)
    assert_same_weights(state, resumed_state)
    assert_same_run(run_dir / "resnet20.h5", tmp_path / "resnet20.h5")


def test_ctrl_c_checkpoints_closes_the_file_and_resumes_exactly(
    dataset, uninterrupted, tmp_path, monkeypatch
):
    run_dir, result, state = uninterrupted
    trainer = Trainer("resnet20", tiny_config(), dataset, tmp_path, progress=False)
    draw = trainer.batches.rank_batch

    def batch_then_ctrl_c(step, rank, world):
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # lands mid-step; the step still completes
        return draw(step, rank, world)

    monkeypatch.setattr(trainer.batches, "rank_batch", batch_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert trainer.recorder is None  # closed
    assert load_checkpoint(tmp_path / "resnet20.ckpt.pt")["step"] == 3
    _, metrics, _, _ = read_run(tmp_path / "resnet20.h5")
    assert list(metrics.index) == [0, 1, 2]
    resumed, resumed_state = train(dataset, tmp_path, resume=True)
    assert resumed.train_loss == result.train_loss
    assert_same_weights(state, resumed_state)
    assert_same_run(run_dir / "resnet20.h5", tmp_path / "resnet20.h5")


def test_deferred_interrupt_defers_the_first_ctrl_c_only():
    # the handler it puts back: Python's own, or SIG_IGN in a process started in the background
    before = signal.getsignal(signal.SIGINT)
    with DeferredInterrupt() as interrupt:
        signal.raise_signal(signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_is_deferred_every_time_and_nested_managers_share_the_request():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with DeferredInterrupt() as outer:
        with DeferredInterrupt() as inner:  # a training loop inside an experiment
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # the scheduler's and the launcher's: no harm
        assert inner.requested and outer.requested and outer.signal_name == "SIGTERM"
        with DeferredInterrupt() as next_loop:  # came in the last step: the next loop sees it
            assert next_loop.requested
            signal.raise_signal(signal.SIGINT)  # a first Ctrl-C after it is deferred too
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with sigterm_as_ctrl_c(), pytest.raises(KeyboardInterrupt):  # outside training: at once
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before[0]


def test_progress_lines_say_steps_rate_loss_error_and_test_error(capsys, monkeypatch):
    monkeypatch.setenv("GRADSCOPE_PROGRESS_SECONDS", "3600")
    lines = ProgressLines("resnet20", 10, 100, line_interval())
    lines.step(2.0, 0.5)  # the first step of a session: printed at once
    lines.step(1.0, 0.25)
    lines.step(3.0, 0.75)
    lines.evaluated(3.0, 0.75, 0.6, 2000)
    lines.close()  # the steps since the last line
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("resnet20 step 11/100  11.0%  ") and " eta " in out[0]
    assert "steps/s  loss 2.0000  err 50.00%" in out[0]
    assert out[1] == "resnet20 step 13/100  evaluated on 2,000 test images: test err 60.00%"
    assert out[2].startswith("resnet20 step 13/100  13.0%") and "loss 2.0000  err 50.00%" in out[2]
    assert out[2].endswith(f"test err 60.00%  eta {out[2].split(' eta ')[1]}")
    assert len(out) == 3
    monkeypatch.setenv("GRADSCOPE_PROGRESS_SECONDS", "soon")
    with pytest.raises(UsageError, match="GRADSCOPE_PROGRESS_SECONDS"):
        line_interval()


def test_training_without_recording_writes_no_run_file(dataset, tmp_path):
    result, _ = train(dataset, tmp_path, record=False, steps=3, eval_every=3)
    assert result.run_path is None and not (tmp_path / "resnet20.h5").exists()
    assert result.finished and result.test_error is not None
    assert result.images_per_second > 0


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one_and_no_debris(
    tmp_path, monkeypatch
):
    path = tmp_path / "resnet20.ckpt.pt"
    save_checkpoint(path, {"step": 1})
    save = torch.save

    def full_disk(state, file):
        save(state, file)  # the bytes that fit, then the failure torch reports on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 266240")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*previous checkpoint"):
        save_checkpoint(path, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20.ckpt.pt"]
    monkeypatch.setattr(torch, "save", save)
    assert torch.load(path)["step"] == 1


def test_unreadable_checkpoint_is_a_usage_error(tmp_path):
    path = tmp_path / "resnet20.ckpt.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        load_checkpoint(path)
