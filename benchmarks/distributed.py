"""Recorder overhead under DDP: 2 gloo ranks on CPU, ResNet-20 recorded every step vs bare twins.

    python benchmarks/distributed.py                   # 2 ranks, global batch 64, 30 rounds
    python benchmarks/distributed.py --rounds 10       # a quick look
    python benchmarks/distributed.py --json out.json   # the figures as JSON too

Each rank (one thread, one process per core) holds four DDP copies of ResNet-20 with the
same initialization: a bare twin, the recorded one (`gradscope.attach(ddp_model, ...)` with
every statistic, every=1), the same recorder without the gradient noise scale (its hooks on
the ranks' gradients before the all-reduce), and a second bare twin, the A/A control: on a
quiet machine its ratio to the first twin is 1, and its spread says how noisy the machine was.
"recorded / without the noise scale" is the paired ratio of the two recorders (goal: 1.02).
One round steps each copy once on the same preloaded batch slice, so drifts in machine speed
hit all alike; the paired ratio is the median over rounds of (copy's step time / bare twin's
step time in that round), rank 0's clock. A step is timed from a barrier to the end of
`optimizer.step()`, so it includes DDP's gradient all-reduce and the recorder's collectives.

The recorder's collectives are counted by wrapping `torch.distributed.all_reduce` (DDP's own
reductions run in C++ and are not counted): how many per record and the bytes they reduce,
against the bytes of the gradients DDP all-reduces per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

WORLD = 2  # ranks: one per core of the machine this was written on
WITHOUT_NOISE = "without the noise scale"  # the recorded copy without the gns_* statistics
TIMEOUT = timedelta(minutes=5)  # a collective that waits longer ends the benchmark


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--image-size", type=int, default=32, help="input side (default 32)")
    parser.add_argument("--model", default="resnet20", help="model name (default resnet20)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return parser


class CountedAllReduce:
    """Counts the calls and bytes of `torch.distributed.all_reduce` while installed."""

    def __init__(self):
        self.calls = 0
        self.bytes = 0
        self._original = dist.all_reduce

    def __enter__(self):
        def counting(tensor, *args, **kwargs):
            self.calls += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return self._original(tensor, *args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._original


class Copy:
    """One DDP copy of the model with its optimizer, optionally recorded, and its step times."""

    def __init__(self, name: str, model: nn.Module, record_path: str | None, stats=None):
        import gradscope

        self.name = name
        self.model = nn.parallel.DistributedDataParallel(model)
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.recorder = None
        if record_path is not None:
            self.recorder = gradscope.attach(
                self.model, record_path, optimizer=self.opt, every=1, stats=stats
            )
        self.times: list[float] = []
        self.collectives: list[tuple[int, int]] = []  # (all_reduce calls, bytes) per step

    def step(self, x, y, timed: bool) -> None:
        dist.barrier()  # both ranks start the step together
        with CountedAllReduce() as counted:
            start = time.perf_counter()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            elapsed = time.perf_counter() - start
        self.opt.zero_grad(set_to_none=True)
        if timed:
            self.times.append(elapsed)
            self.collectives.append((counted.calls, counted.bytes))


def _rank(rank: int, args, rendezvous: str, folder: str, results: str) -> None:
    from gradscope.models import create_model
    from gradscope.recorder import ALL_STATS, GNS_STATS

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD, timeout=TIMEOUT
    )
    copies = []
    without_noise = [s for s in ALL_STATS if s not in GNS_STATS]
    for name, path, stats in (
        ("bare DDP", None, None),
        ("recorded, every=1", f"{folder}/recorded.h5", None),
        (WITHOUT_NOISE, f"{folder}/without-noise.h5", without_noise),
        ("bare DDP (A/A control)", None, None),
    ):
        torch.manual_seed(0)
        copies.append(Copy(name, create_model(args.model), path, stats))
    g = torch.Generator().manual_seed(1 + rank)  # each rank its own slice
    rows = args.batch // WORLD
    x = torch.randn(rows, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, 10, (rows,), generator=g)
    for round_ in range(args.warmup + args.rounds):
        for copy in copies:
            copy.step(x, y, timed=round_ >= args.warmup)
    layers = 0
    for copy in copies:
        if copy.recorder is not None:
            layers = len(copy.recorder.layer_names)
            copy.recorder.close()
    if rank == 0:
        grad_bytes = sum(p.numel() * p.element_size() for p in copies[0].model.parameters())
        figures = {
            "times": {c.name: c.times for c in copies},
            "collectives": {c.name: c.collectives for c in copies},
            "layers": layers,
            "gradient_bytes": grad_bytes,
        }
        Path(results).write_text(json.dumps(figures))
    dist.barrier()
    dist.destroy_process_group()


def quartiles(ratios: list[float]) -> list[float] | None:
    """[q1, q3] of the ratios (None for a single one)."""
    return statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else None


def summarize(figures: dict, args) -> dict:
    """Paired ratios against the bare twin, and the recorder's collectives per record."""
    times = figures["times"]
    bare = times["bare DDP"]
    rows = {}
    for name, steps in times.items():
        ratios = [t / b for t, b in zip(steps, bare, strict=True)]
        rows[name] = {
            "median_ms": 1000 * statistics.median(steps),
            "paired": statistics.median(ratios),
            "paired_q1_q3": quartiles(ratios),
        }
    noise = [t / b for t, b in zip(times["recorded, every=1"], times[WITHOUT_NOISE], strict=True)]
    calls, sent = zip(*figures["collectives"]["recorded, every=1"], strict=True)
    return {
        "model": args.model,
        "ranks": WORLD,
        "global_batch": args.batch,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "layers": figures["layers"],
        "variants": rows,
        "noise_scale_ratio": statistics.median(noise),
        "noise_scale_ratio_q1_q3": quartiles(noise),
        "collectives_per_record": statistics.median(calls),
        "bytes_reduced_per_record": statistics.median(sent),
        "gradient_bytes_per_step": figures["gradient_bytes"],
    }


def print_summary(summary: dict) -> None:
    print(
        f"{summary['model']}, {summary['ranks']} gloo ranks on CPU (1 thread each), global batch "
        f"{summary['global_batch']} at {summary['image_size']}px, {summary['rounds']} rounds, "
        f"{summary['layers']} recorded layers"
    )
    print(f"{'copy':<24} {'median step':>12} {'paired ratio':>13} {'ratio q1-q3':>15}")
    for name, row in summary["variants"].items():
        spread = row["paired_q1_q3"]
        quartiles = f"{spread[0]:.3f}-{spread[1]:.3f}" if spread else "-"
        print(f"{name:<24} {row['median_ms']:>9.1f} ms {row['paired']:>13.3f} {quartiles:>15}")
    spread = summary["noise_scale_ratio_q1_q3"]
    quartiles = f"{spread[0]:.3f}-{spread[1]:.3f}" if spread else "-"
    print(
        f"recorded / {WITHOUT_NOISE}: {summary['noise_scale_ratio']:.3f} paired (q1-q3 {quartiles})"
    )
    per_record = summary["bytes_reduced_per_record"]
    print(
        f"recorder collectives per record: {summary['collectives_per_record']:g} all_reduce, "
        f"{per_record:,.0f} bytes ({per_record / summary['layers']:.0f} per layer; DDP reduces "
        f"{summary['gradient_bytes_per_step']:,} bytes of gradients per step)"
    )


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.batch % WORLD or args.rounds < 1:
        raise SystemExit(f"--batch must split over {WORLD} ranks and --rounds be at least 1")
    with tempfile.TemporaryDirectory(prefix="gradscope-distributed-") as folder:
        results = os.path.join(folder, "results.json")
        mp.start_processes(
            _rank,
            args=(args, os.path.join(folder, "rendezvous"), folder, results),
            nprocs=WORLD,
            start_method="spawn",
        )
        summary = summarize(json.loads(Path(results).read_text()), args)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
