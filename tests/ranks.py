"""Helpers for tests with real torch.distributed processes (gloo on CPU), bounded in time."""

import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

RANK_TIMEOUT = timedelta(seconds=60)  # a collective that waits longer fails the test


def rendezvous_file(folder) -> str:
    """A fresh file for the ranks to meet through (`init_method="file://..."`): no TCP port,
    so no race with other processes for a free one."""
    path = Path(folder) / "rendezvous"
    if path.exists():
        path.unlink()  # a file left by an earlier group would confuse the new one
    return str(path)


def init_gloo(rank: int, world: int, rendezvous: str) -> None:
    """Join a gloo process group through the file `rendezvous`, with a collective timeout a
    test can afford."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=RANK_TIMEOUT,
    )


def run_ranks(fn, args=(), world: int = 2, timeout: float = 240.0) -> None:
    """Run `fn(rank, *args)` in `world` spawned processes; a failure or a hang fails the test."""
    context = mp.start_processes(fn, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise AssertionError(f"the {world} ranks did not finish within {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
