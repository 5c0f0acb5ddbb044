"""Training checkpoints: file naming, atomic save, checked load, and RNG state capture."""

import os
import shutil
from pathlib import Path

import torch

from gradscope.errors import GradscopeError, UsageError, describe

CHECKPOINT_SUFFIX = ".ckpt.pt"  # checkpoint of model M sits next to its run file: M.ckpt.pt
FULL_DISK_BYTES = 1024 * 1024  # a failed checkpoint with less free than this: the disk is full


def checkpoint_path(run_dir: str | os.PathLike, model_name: str) -> Path:
    """Where the checkpoint of `model_name` lives inside an experiment folder."""
    return Path(run_dir) / f"{model_name}{CHECKPOINT_SUFFIX}"


class CheckpointError(GradscopeError):
    """A checkpoint could not be written (a full disk, an I/O error); the previous one stands."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` to `path` atomically: a crash mid-write keeps the previous checkpoint.

    A failed write (a full disk) removes what it wrote and raises CheckpointError.
    """
    path = Path(path)
    tmp_path = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp_path)
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as e:  # torch reports a short write as a RuntimeError
        tmp_path.unlink(missing_ok=True)  # it would hold the space a full disk lacks
        kept = "the previous checkpoint stands" if path.is_file() else "there is no checkpoint yet"
        raise CheckpointError(f"cannot write checkpoint {path} ({_why(e, path)}); {kept}") from e


def _why(error: BaseException, path: Path) -> str:
    """What stopped a checkpoint: torch says "unexpected pos" for a full disk, so look."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < FULL_DISK_BYTES:
        return f"the disk is full: {free:,} bytes free"
    return describe(error)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by `save_checkpoint` onto the CPU; a bad file raises UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}; start the run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise UsageError(
            f"cannot read checkpoint {path} ({e.__class__.__name__}); delete it to restart "
            "this model from step 0"
        ) from e
    missing = {"model", "optimizer", "scheduler", "rng", "step", "done"} - set(state)
    if missing:
        raise UsageError(
            f"{path} is not a gradscope checkpoint (missing {', '.join(sorted(missing))})"
        )
    return state


def capture_rng_state() -> dict:
    """The torch random states (CPU and every CUDA device), for an exact resume."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put back the random states captured by `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
