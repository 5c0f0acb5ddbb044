"""gradscope: gradient-flow diagnostics and visualization for PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradscope.diagnosis import diagnose
from gradscope.errors import (
    GradscopeError,
    NonFiniteError,
    RunFileError,
    RunFileWarning,
    UsageError,
)
from gradscope.store import open_run

if TYPE_CHECKING:  # torch loads only when a recorder is made: `import gradscope` stays light
    from collections.abc import Callable

    import torch

    from gradscope.recorder import Recorder
    from gradscope.store import Run

__version__ = "0.1.0"


def attach(
    model: torch.nn.Module,
    path,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    every: int | Callable[[int], bool] = 1,
    stats=None,
    layers=None,
    batch_sample: int | None = 32,
    overwrite: bool = False,
    resume: bool = False,
    start_step: int | None = None,
    attrs: dict[str, Any] | None = None,
    flush_interval: float = 2.0,
    all_ranks: bool = False,
    manual_gradients: bool = False,
    nonfinite: str = "watch",
    on_write_error: str = "warn",
) -> Recorder:
    """Attach a recorder to `model` that streams per-layer statistics to the run file `path`.

    Use it as a context manager, or call `close()` on what it returns.

    Args:
        model: the `torch.nn.Module` to watch (or its `torch.compile` wrapper).
        path: the HDF5 run file to write (its folder is created if missing).
        optimizer: records are taken at `optimizer.step()`; without one, call `rec.step()`
            after each update and before `zero_grad()`.
        every: record every N-th optimizer step (0, N, 2N, ...), or a callable `step -> bool`.
        stats: names of the statistics to record (default: all, `gradscope.recorder.ALL_STATS`).
        layers: which modules to watch: name globs ("layer3.*.conv2"), module types
            (`nn.ReLU`) and/or modules of the model, or a list of them (default: every module
            owning parameters directly).
        batch_sample: activation moments use the first this-many rows of each output (None:
            the whole batch); `act_grad_norm` always uses the whole batch.
        overwrite: replace an existing file (never one that a live recorder is writing).
        resume: append to an existing file after its last step.
        start_step: with `resume=True`, the step to continue from: records at steps >= it are
            dropped first (a run resumed from a checkpoint at that step).
        attrs: extra JSON-able attributes stored in the file.
        flush_interval: seconds between the writer's flushes to disk (at most 10).
        all_ranks: under torch.distributed (where every rank calls attach, and rank 0 writes
            `path` with the statistics of the global batch), also write each rank's local
            statistics to `<path stem>.rank<r>.h5`.
        manual_gradients: read the gradients when `rec.read_gradients()` is called (from a
            framework's before-optimizer-step hook), not in `optimizer.step()`'s pre-hook, which
            under `optimizer.step(closure)` runs before the closure's backward.
        nonfinite: the flight recorder (docs/nonfinite.md). At every update, one check for an
            inf or NaN in any gradient or weight; when it finds one, the step is replayed with
            checks on every watched module to find the first op that made it, the origin is
            stored in the run file and the step recorded in full. Then "watch" (the default)
            lets the update run, "skip" skips it (needs `optimizer`), "raise" raises
            `gradscope.NonFiniteError` from `optimizer.step()` before the update; "off" does
            none of it.
        on_write_error: what a failed write of the run file does (a full disk, an I/O error,
            a read-only file system, its folder removed): "warn" (one `RunFileWarning`; the
            file keeps what was written before and says why it ended; training goes on and
            records nothing more), or "raise" (`RunFileError` from the next optimizer step).

    Returns:
        The `gradscope.recorder.Recorder`: `log(**scalars)`, `step()`, `read_gradients()`,
        `close()`.
    """
    from gradscope.recorder import Recorder

    return Recorder(
        model,
        path,
        optimizer=optimizer,
        every=every,
        stats=stats,
        layers=layers,
        batch_sample=batch_sample,
        overwrite=overwrite,
        resume=resume,
        start_step=start_step,
        attrs=attrs,
        flush_interval=flush_interval,
        all_ranks=all_ranks,
        manual_gradients=manual_gradients,
        nonfinite=nonfinite,
        on_write_error=on_write_error,
    )


def probe(
    model,
    batch=None,
    *,
    steps: int = 0,
    widths=None,
    path=None,
    input_shape=None,
    batch_size: int = 128,
    loss: Callable | None = None,
    optimizer=None,
    layers=None,
    residual_branches: dict | None = None,
    seed: int = 0,
    name: str | None = None,
) -> Run:
    """Probe a model before training: signal propagation at initialization, and width sweeps.

    One forward, backward and optimizer step on a batch (then `steps` more, each recorded)
    measures per watched layer, in depth order: Brock et al.'s average channel squared mean
    and channel variance of the output, the residual branch's variance against the skip's in
    residual blocks, the mean |activation|, the share of dead units, and with the recorder:
    `act_grad_norm`, `grad_norm`, `weight_norm` and the `update_ratio` of each step. The model
    is left as it was: its weights, buffers, gradients, train/eval modes, torch's random
    generators and a given optimizer's state are put back. docs/probe.md has the details.

    Args:
        model: the `torch.nn.Module` to probe; with `widths`, a callable building the model at
            a width (called as `model(width=w)` after seeding torch with `seed`).
        batch: None for a Gaussian batch N(0, 1) of `batch_size` x `input_shape`, drawn per
            step from `seed`; a tensor of inputs or an (inputs, targets) pair, used at every
            step; or a callable step -> (inputs, targets), e.g. `TrainBatches(...).batch`.
        steps: optimizer steps to train and record after the one at initialization.
        widths: widths to sweep (at least two): each width's model trains `steps` steps on
            the same batches from the same seed; the file holds every width.
        path: the probe file to write (an existing probe file there is replaced, any other
            file refused); None writes a temporary file, removed when the process exits.
        input_shape: one example's shape for the Gaussian batch, e.g. (3, 32, 32), when it
            cannot be told from the model (its `input_shape` attribute, or a first Linear).
        batch_size: rows of the Gaussian batch.
        loss: `loss(output, target) -> scalar tensor`; default: cross-entropy over the
            output's last dimension against the targets, or against labels drawn from `seed`.
        optimizer: the optimizer whose first step's update is measured: an optimizer of the
            model (its state is put back), a callable model -> optimizer (needed with
            `widths`), or None for SGD(lr=0.1, momentum=0.9, weight_decay=1e-4).
        layers: which modules to watch, as `gradscope.attach` takes it; default: every module
            owning parameters, every recognised block and every ReLU module.
        residual_branches: residual blocks of your own model, {block class or name glob:
            (branch's last module, shortcut module or None for the identity)}, named within
            the block; gradscope's and torchvision's ResNet blocks are recognised by themselves.
        seed: seeds the Gaussian batches, the drawn labels, the forward's random draws and,
            with `widths`, each width's initialization.
        name: the model's name in the file and in figures (default: its class name, or the
            factory's name).

    Returns:
        The probe file, opened as `gradscope.open_run` opens it: `gradscope.diagnose(probe)`
        gives the diagnosis at initialization.
    """
    from gradscope._probe._run import run_probe

    return run_probe(
        model,
        batch,
        steps=steps,
        widths=widths,
        path=path,
        input_shape=input_shape,
        batch_size=batch_size,
        loss=loss,
        optimizer=optimizer,
        layers=layers,
        residual_branches=residual_branches,
        seed=seed,
        name=name,
    )


__all__ = [
    "GradscopeError",
    "NonFiniteError",
    "RunFileError",
    "RunFileWarning",
    "UsageError",
    "attach",
    "diagnose",
    "open_run",
    "probe",
    "__version__",
]
