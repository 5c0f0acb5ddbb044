"""gradscope: gradient-flow diagnostics and visualization for PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradscope.diagnosis import diagnose
from gradscope.errors import GradscopeError, RunFileError, RunFileWarning, UsageError
from gradscope.store import open_run

if TYPE_CHECKING:  # torch loads only when a recorder is made: `import gradscope` stays light
    from collections.abc import Callable

    import torch

    from gradscope.recorder import Recorder

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
        layers: which modules to watch: name globs ("layer3.*.conv2") and/or module types
            (`nn.ReLU`), or a list of them (default: every module owning parameters directly).
        batch_sample: activation moments use the first this-many rows of each output (None:
            the whole batch); `act_grad_norm` always uses the whole batch.
        overwrite: replace an existing file.
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
        on_write_error=on_write_error,
    )


__all__ = [
    "GradscopeError",
    "RunFileError",
    "RunFileWarning",
    "UsageError",
    "attach",
    "diagnose",
    "open_run",
    "__version__",
]
