"""Training under torchrun: this process's rank, the process group, and what ranks agree on."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from gradscope.data import resolve_device
from gradscope.errors import GradscopeError, UsageError

# A collective that waits longer than this fails on every rank still alive: a rank that hangs
# (not one that dies: torchrun stops the others at once) ends the run within this bound.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class PeerFailed(GradscopeError):
    """Another rank failed and said why; this one stops without repeating it."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the training processes."""

    rank: int = 0  # this process's global rank
    world: int = 1  # processes sharing each global batch
    local_rank: int = 0  # rank on this machine (the CUDA device it uses)

    @property
    def is_main(self) -> bool:
        """Rank 0: it writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process trains."""
        return self.world > 1

    def sum(self, values: torch.Tensor) -> list[float]:
        """`values` (a small tensor) added over the ranks in one all_reduce, as floats.

        note: a host sync, like the `.tolist()` it ends in.
        """
        values = values.double()
        if self.distributed:
            dist.all_reduce(values)
        return values.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when `flag` is True on any rank (one all_reduce on `device`)."""
        if not self.distributed:
            return bool(flag)
        return self.sum(torch.tensor([float(flag)], device=device))[0] > 0

    def share(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, failure: BaseException | None) -> None:
        """Every rank meets here (one all_gather); if any failed, every rank raises: the failed
        ranks their own error, the others PeerFailed."""
        if not self.distributed:
            if failure is not None:
                raise failure
            return
        reasons = [None] * self.world
        dist.all_gather_object(reasons, None if failure is None else str(failure))
        if failure is not None:
            raise failure
        failed = [rank for rank, reason in enumerate(reasons) if reason is not None]
        if failed:
            raise PeerFailed(f"rank {failed[0]} failed: {reasons[failed[0]]}")

    def main_first(self, work):
        """Run `work()` on rank 0, then on the other ranks (e.g. rank 0 fills a cache the others
        read); every rank's result, or every rank stops if one fails."""
        result = failure = None
        if self.is_main:
            try:
                result = work()
            except Exception as e:  # noqa: BLE001 - the other ranks must hear of it
                failure = e
        self.agree(failure)
        if not self.is_main:
            try:
                result = work()
            except Exception as e:  # noqa: BLE001
                failure = e
        self.agree(failure)
        return result

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics drift per rank)."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)


def current_ranks() -> Ranks:
    """The Ranks of an initialized process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return Ranks(dist.get_rank(), dist.get_world_size(), local)
    return Ranks()


def launched_by_torchrun() -> bool:
    """True when the environment says torchrun (or another launcher) started this process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def process_rank() -> int:
    """This process's rank: an initialized group's, torchrun's RANK, or 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def planned_world() -> int:
    """The number of training processes: torchrun's WORLD_SIZE, an initialized group's, or 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def rank_device(spec: str, ranks: Ranks) -> torch.device:
    """The device of this rank: CUDA device LOCAL_RANK for "auto"/"cuda" under several ranks."""
    device = resolve_device(spec)
    if not ranks.distributed or device.type != "cuda":
        return device
    if spec not in ("auto", "cuda"):
        raise UsageError(
            f"--device {spec}: under torchrun each rank uses CUDA device LOCAL_RANK; "
            "give --device cuda (or auto)"
        )
    return torch.device("cuda", ranks.local_rank)


@contextlib.contextmanager
def training_processes(device_spec: str):
    """Yield this process's Ranks: under torchrun, in a process group it starts (gloo on CPU,
    nccl on CUDA) and ends on the way out; a group already started is used as it is."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield current_ranks()
        return
    world = int(os.environ["WORLD_SIZE"])
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]))
    if world == 1:
        yield ranks
        return
    if not dist.is_available():
        raise UsageError("this torch was built without torch.distributed; run one process")
    device = rank_device(device_spec, ranks)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, timeout=COLLECTIVE_TIMEOUT, device_id=device if device.type == "cuda" else None
    )
    try:
        yield ranks
    finally:
        dist.destroy_process_group()
