"""The training loop (He et al. 2016 CIFAR recipe by default), with checkpoints and exact resume."""

import contextlib
import itertools
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gradscope.data import TrainBatches, eval_batches, eval_subset_stride
from gradscope.models import create_model, get_model_spec
from gradscope.train._checkpoint import (
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from gradscope.train._config import (
    TrainConfig,
    build_lr_scheduler,
    plan_steps,
)
from gradscope.train._distributed import Ranks, current_ranks, rank_device
from gradscope.train._interrupt import DeferredInterrupt
from gradscope.train._progress import evaluation_bar, training_progress

SUMMARY_WINDOW = 100  # steps averaged for the final train loss and error


@dataclass
class TrainResult:
    """Where one model's training stands: progress, final figures, files."""

    model: str  # registered model name
    steps_done: int  # optimizer steps completed so far (all sessions)
    total_steps: int  # optimizer steps of the full run
    train_loss: float  # mean train loss over the last SUMMARY_WINDOW steps
    train_error: float  # mean train error (fraction) over the last SUMMARY_WINDOW steps
    test_loss: float | None  # at the latest evaluation (None: not evaluated yet)
    test_error: float | None  # fraction misclassified at the latest evaluation
    test_images: int | None  # test images the latest evaluation used (all, or the subset)
    test_set_size: int | None  # images in the whole test set
    images_per_second: float | None  # training steps only, evaluation excluded (None: no steps)
    run_path: Path | None  # the HDF5 run file (None when not recording)
    checkpoint_path: Path  # the checkpoint file

    @property
    def finished(self) -> bool:
        """True once every step of the run is done."""
        return self.steps_done >= self.total_steps


class Trainer:
    """Trains one model of an experiment folder: `run()` steps it, `close()` ends the session.

    Files in `run_dir`: `<model>.h5` (the recorder's run file) and `<model>.ckpt.pt`.
    With `resume=True` the model, optimizer, scheduler and RNG states come from the checkpoint
    and the run file is appended to from the checkpoint's step.

    Under torchrun (`ranks` with several processes) the model trains as DDP: each rank takes
    its slice of every global batch, the same initialization everywhere; rank 0 writes the run
    file and checkpoints and shows progress; train and test figures are of the global batch
    and the whole test set (evaluation is split over the ranks).
    """

    def __init__(
        self,
        model_name,
        config,
        dataset,
        run_dir,
        *,
        resume=False,
        attrs=None,
        progress=True,
        ranks: Ranks | None = None,
    ):
        self.model_name = model_name
        self.config = config
        self.dataset = dataset
        self.ranks = ranks if ranks is not None else current_ranks()
        self.progress = progress and self.ranks.is_main
        self.device = rank_device(config.device, self.ranks)
        self.amp = self.device.type == "cuda" if config.amp is None else config.amp
        self.batches = TrainBatches(dataset, batch_size=config.batch_size, seed=config.seed)
        self.plan = plan_steps(config, self.batches.steps_per_epoch)
        self.checkpoint_path = checkpoint_path(run_dir, model_name)
        self.run_path = Path(run_dir) / f"{model_name}.h5" if config.record else None

        torch.manual_seed(config.seed)  # every model of the pair starts from the same RNG stream
        shortcut = {"shortcut": config.shortcut} if get_model_spec(model_name).shortcuts else {}
        self.model = create_model(model_name, num_classes=dataset.num_classes, **shortcut)
        if config.sync_bn:  # batch statistics over the global batch (parameters are kept)
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        memory_format = torch.channels_last if self.amp else torch.preserve_format
        self.model.to(self.device, memory_format=memory_format)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.scheduler = build_lr_scheduler(self.optimizer, self.plan, config)
        self.step = 0  # optimizer steps completed
        self.recent = deque(maxlen=SUMMARY_WINDOW)  # (loss, error) of the latest steps
        self.last_eval = None  # (test_loss, test_error, test_images) of the latest evaluation
        self.done = False
        self.checkpoint_step = None  # the step of the checkpoint on disk (None: none yet)
        self._train_seconds = 0.0  # this session's time inside training steps
        self._session_steps = 0
        self._stop = False  # every rank agreed to stop after this step (Ctrl-C on some rank)
        if resume and self.checkpoint_path.is_file():
            self._load(load_checkpoint(self.checkpoint_path))
        trained = self.model
        if self.ranks.distributed:  # the constructor checks every rank holds rank 0's model
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            trained = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        # the recorder watches the modules inside a compiled forward too (see README: compile)
        self.forward = torch.compile(trained) if config.compile else trained
        # evaluation bypasses DDP: its forward broadcasts buffers, a collective that would wait
        # for ranks with one evaluation batch fewer (evaluate() broadcasts them once instead)
        self.eval_forward = self.forward
        if self.ranks.distributed:
            self.eval_forward = torch.compile(self.model) if config.compile else self.model
        self.recorder = None
        if config.record:
            import gradscope

            self.recorder = gradscope.attach(
                self.forward,
                self.run_path,
                optimizer=self.optimizer,
                every=config.record_every,
                resume=resume and self.run_path.exists(),
                start_step=self.step if resume and self.run_path.exists() else None,
                attrs=attrs,
            )

    def _load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.step = self.checkpoint_step = state["step"]
        self.recent.extend(tuple(pair) for pair in state["recent"])
        self.last_eval = _eval_triple(state["last_eval"], self.dataset)
        self.done = state["done"]

    def save_checkpoint(self) -> None:
        """Write model, optimizer, scheduler, RNG states and step, atomically (rank 0); a
        failed write raises CheckpointError and leaves the previous checkpoint."""
        if not self.ranks.is_main:
            self.checkpoint_step = self.step
            return  # every rank holds the same state
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "step": self.step,
            "done": self.done,
            "recent": [list(pair) for pair in self.recent],
            "last_eval": list(self.last_eval) if self.last_eval else None,
            "model_name": self.model_name,
            "config": asdict(self.config),
        }
        save_checkpoint(self.checkpoint_path, state)
        self.checkpoint_step = self.step

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self, stop_requested=None) -> tuple[float, float]:
        """One optimizer step on batch `self.step`; returns its (loss, error) over the global
        batch. `stop_requested()` (Ctrl-C on this rank), asked once the step is done: if it is
        True on any rank, every rank stops after this same step (`self._stop`)."""
        x, y = self.batches.rank_batch(self.step, self.ranks.rank, self.ranks.world)
        if self.amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        self.optimizer.step()
        self.scheduler.step()
        wrong = (logits.detach().argmax(1) != y).sum()
        stop = torch.tensor(float(bool(stop_requested and stop_requested())), device=loss.device)
        # note: the one CPU-GPU sync point per step (tqdm and the run file need the numbers),
        # and under torchrun the one collective besides DDP's
        loss_sum, wrong_count, stops = self.ranks.sum(
            torch.stack([loss.detach().float(), wrong.float(), stop])
        )
        loss_value = loss_sum / self.ranks.world  # equal slices: the global batch's mean loss
        error = wrong_count / self.config.batch_size
        self._stop = stops > 0
        if self.recorder is not None:
            self.recorder.log(step=self.step, loss=loss_value, error=error, lr=lr)
        self.recent.append((loss_value, error))
        self.step += 1
        return loss_value, error

    @torch.no_grad()
    def evaluate(self, full: bool = True) -> tuple[float, float, int]:
        """(test loss, test error, images) on the whole test set, or with `full=False` on the
        fixed subset of `config.eval_subset` images; logged against the latest step."""
        limit = None if full else self.config.eval_subset
        total = len(self.dataset.test_labels)
        images = -(-total // eval_subset_stride(total, limit))  # ceil: every k-th image
        rank, world = self.ranks.rank, self.ranks.world
        size = self.config.eval_batch_size
        self.ranks.broadcast_buffers(self.model)  # evaluate rank 0's model on every rank
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device)
        count = 0
        desc = f"{self.model_name} test" + ("" if full else " subset")
        bar = evaluation_bar(desc, images, self.progress)
        with bar, self._autocast():  # the recorder ignores forwards without grad
            batches = eval_batches(self.dataset, size, limit=limit)
            mine = itertools.islice(batches, rank, None, world)  # every world-th batch
            for done, (x, y) in enumerate(mine):
                if self.amp:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = self.eval_forward(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                wrong += (logits.argmax(1) != y).sum()
                count += y.shape[0]
                # the images of this round of batches, one per rank (rank 0's bar shows)
                bar.update(min(images, (done + 1) * world * size) - done * world * size)
        self.model.train()
        counted = torch.tensor(float(count), device=self.device)
        test_loss, wrong_count, count = self.ranks.sum(torch.stack([loss_sum, wrong, counted]))
        count = int(count)
        self.last_eval = (test_loss / count, wrong_count / count, count)
        if self.recorder is not None:
            self.recorder.log(
                step=self.step - 1,
                test_loss=test_loss / count,
                test_error=wrong_count / count,
                test_images=count,
            )
        return self.last_eval

    def run(self, stop_at_step: int | None = None, *, save_on_pause=True) -> TrainResult:
        """Train until the end of the run (or `stop_at_step`), evaluating and checkpointing.

        Pausing at `stop_at_step` checkpoints unless `save_on_pause=False` (for callers that
        continue in the same process, e.g. a benchmark running the loop in blocks).

        The first Ctrl-C (or any SIGTERM) finishes the current step, checkpoints, closes the
        run file and raises KeyboardInterrupt; a second Ctrl-C interrupts at once (the last
        checkpoint stands). Progress shows as a bar on a terminal, as a line every
        $GRADSCOPE_PROGRESS_SECONDS (30 s) when the output goes to files (`train/_progress.py`).
        """
        total = self.plan.total_steps
        end = total if stop_at_step is None else min(stop_at_step, total)
        self.model.train()
        progress = training_progress(self.model_name, self.step, total, self.progress)
        with contextlib.closing(progress), DeferredInterrupt() as interrupt:
            while self.step < end:
                started = time.perf_counter()
                loss, error = self.train_step(lambda: interrupt.requested)
                self._train_seconds += time.perf_counter() - started
                self._session_steps += 1
                progress.step(loss, error)
                if self.step % self.plan.eval_every == 0 or self.step == total:
                    progress.evaluating()
                    self.evaluate(full=self.step == total)
                    progress.evaluated(loss, error, self.last_eval[1], self.last_eval[2])
                self.done = self.step == total
                if self.done or self.step % self.plan.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._stop and not self.done:
                    self.save_checkpoint()
                    self.close()
                    raise KeyboardInterrupt
            if save_on_pause and self.step == end and not self.done:
                self.save_checkpoint()  # a session stopped early on purpose
        return self.result()

    def result(self) -> TrainResult:
        """The model's state now: progress, final figures and its files."""
        if self.recent:
            losses, errors = zip(*self.recent, strict=True)
            train_loss, train_error = sum(losses) / len(losses), sum(errors) / len(errors)
        else:
            train_loss = train_error = math.nan
        throughput = None
        if self._session_steps and self._train_seconds > 0:
            images = self._session_steps * self.config.batch_size
            throughput = images / self._train_seconds
        return TrainResult(
            model=self.model_name,
            steps_done=self.step,
            total_steps=self.plan.total_steps,
            train_loss=train_loss,
            train_error=train_error,
            test_loss=self.last_eval[0] if self.last_eval else None,
            test_error=self.last_eval[1] if self.last_eval else None,
            test_images=self.last_eval[2] if self.last_eval else None,
            test_set_size=len(self.dataset.test_labels),
            images_per_second=throughput,
            run_path=self.run_path,
            checkpoint_path=self.checkpoint_path,
        )

    def close(self) -> None:
        """Close the run file (idempotent); the checkpoint on disk is the state to resume from."""
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def finished_result(model_name: str, config: TrainConfig, run_dir: str | os.PathLike, dataset):
    """The TrainResult of a model whose checkpoint says it is done, or None if it is not."""
    path = checkpoint_path(run_dir, model_name)
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    if not state["done"]:
        return None
    losses, errors = zip(*state["recent"], strict=True) if state["recent"] else ((math.nan,),) * 2
    test = _eval_triple(state["last_eval"], dataset) or (None, None, None)
    return TrainResult(
        model=model_name,
        steps_done=state["step"],
        total_steps=state["step"],
        train_loss=sum(losses) / len(losses),
        train_error=sum(errors) / len(errors),
        test_loss=test[0],
        test_error=test[1],
        test_images=test[2],
        test_set_size=len(dataset.test_labels),
        images_per_second=None,
        run_path=Path(run_dir) / f"{model_name}.h5" if config.record else None,
        checkpoint_path=path,
    )


def _eval_triple(saved, dataset) -> tuple[float, float, int] | None:
    """A checkpoint's latest evaluation as (loss, error, images); older ones lack the count."""
    if not saved:
        return None
    if len(saved) == 2:  # written before the count was kept: it was the whole test set
        return (saved[0], saved[1], len(dataset.test_labels))
    return tuple(saved)
