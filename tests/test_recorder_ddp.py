"""Under DDP (two real gloo processes), rank 0 records the all-reduced gradients; rank 1 nothing."""

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import gradscope


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = gradscope.attach(model, f"{folder}/rank{rank}.h5", optimizer=opt, stats=["grad_norm"])
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(6, 4, generator=g), torch.randint(0, 2, (6,), generator=g)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    rec.close()
    dist.destroy_process_group()


def test_rank_zero_records_all_reduced_gradients(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert not (tmp_path / "rank1.h5").exists()
    run = gradscope.open_run(tmp_path / "rank0.h5")
    assert list(run.layers["name"]) == ["module.0", "module.2"]

    # Reference: the same model on the concatenated batch gives the averaged gradient.
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    losses = []
    for rank in range(2):
        g = torch.Generator().manual_seed(rank)
        x, y = torch.randn(6, 4, generator=g), torch.randint(0, 2, (6,), generator=g)
        losses.append(F.cross_entropy(ref(x), y))
    (sum(losses) / 2).backward()
    want = [
        torch.cat([p.grad.reshape(-1) for p in m.parameters()]).norm().item()
        for m in (ref[0], ref[2])
    ]
    np.testing.assert_allclose(run.stat("grad_norm")[0], want, rtol=1e-5)
