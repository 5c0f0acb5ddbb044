"""Helpers for tests with real torch.distributed processes (gloo on CPU), bounded in time."""

import os
import socket
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp

RANK_TIMEOUT = timedelta(seconds=60)  # a collective that waits longer fails the test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int) -> None:
    """Join a gloo process group on localhost, with a collective timeout a test can afford."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=RANK_TIMEOUT)


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
