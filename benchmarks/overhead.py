"""Recorder overhead: step-time ratios of recorded vs bare models, interleaved in one process.

    python benchmarks/overhead.py                 # ResNet-56 (batch 128) and ResNet-1202 (batch 32)
    python benchmarks/overhead.py --steps 10 --skip-1202   # a quick look
    python benchmarks/overhead.py --skip-56 --steps-1202 20  # ResNet-1202 only, 20 rounds

Every variant trains its own copy of the model on the same preloaded batch; one round steps the
bare twin, then each variant, so drifts in machine speed hit all of them alike. The ratio is
median over rounds of (variant step time / bare step time in that round); the ratio of the median
step times and that of the means are given too (for `every=10` the mean counts the one recorded
step in ten, which the medians hide).

On CPU, glibc gives freed activation memory back to the OS and faults it in again on the next
step, tens of thousands of page faults per ResNet-56 step, in amounts that depend on the heap's
layout and so differ from variant to variant at random (bare steps included). The "faults"
column shows the median per step. `--steady-heap` sets glibc's trim and mmap thresholds for this
process (as MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ would), so no variant pays those
faults and the ratios show the recorder's own cost.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gradscope
from gradscope.models import create_model
from gradscope.recorder import PARAM_STATS


class Variant:
    """One model copy with its optimizer, and optionally a recorder or the naive probe."""

    def __init__(self, name, model, setup=None):
        self.name = name
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.times: list[float] = []
        self.faults: list[int] = []  # minor page faults of the process during each step
        self.recorder = setup(self) if setup else None

    def step(self, x, y) -> None:
        faults = _minor_faults()
        start = time.perf_counter()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - start)
        self.faults.append(_minor_faults() - faults)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling on 64-bit


def steady_heap() -> None:
    """Keep freed memory in glibc's heap: no trimming, and blocks below 32 MB from the heap."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not (
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
    ):
        raise SystemExit(
            "--steady-heap needs glibc's mallopt; this C library has none: run without it"
        )


def naive_probe(variant: Variant):
    """The usual hand-written way: per-layer `.abs().mean().item()` on outputs and gradients."""
    layers = [m for m in variant.model.modules() if next(m.parameters(False), None) is not None]
    values = []

    def forward_hook(module, inputs, output):
        values.append(output.detach().abs().mean().item())

    for m in layers:
        m.register_forward_hook(forward_hook)

    def grad_probe(optimizer, args, kwargs):
        for m in layers:
            for p in m.parameters(recurse=False):
                if p.grad is not None:
                    values.append(p.grad.abs().mean().item())

    variant.opt.register_step_pre_hook(grad_probe)
    return None


def recorded(folder: Path, **attach_kwargs):
    def setup(variant: Variant):
        path = folder / f"{variant.name.replace(' ', '_').replace('=', '')}.h5"
        return gradscope.attach(variant.model, path, optimizer=variant.opt, **attach_kwargs)

    return setup


def run_rounds(variants: list[Variant], x, y, steps: int, warmup: int) -> None:
    for _ in range(warmup):
        for v in variants:
            v.step(x, y)
    for v in variants:
        v.times.clear()
        v.faults.clear()
    for i in range(steps):
        # rotate who goes first, so no variant always follows the same neighbour
        for v in variants[i % len(variants) :] + variants[: i % len(variants)]:
            v.step(x, y)


def report(variants: list[Variant], title: str) -> None:
    """Per variant: the median over rounds of its step time / the bare step time of the same
    round (paired: a drift in machine speed that lasts a few steps hits both sides), the ratio
    of the median step times, and the ratio of the mean step times."""
    bare = variants[0]
    base_median = statistics.median(bare.times)
    base_mean = statistics.fmean(bare.times)
    print(
        f"\n{title}: bare step median {base_median * 1e3:.0f} ms over {len(bare.times)} steps, "
        f"{statistics.median(bare.faults):.0f} page faults"
    )
    print(
        f"{'variant':<36} {'median ms':>10} {'paired':>7} {'medians':>8} {'means':>6} {'faults':>7}"
    )
    for v in variants[1:]:
        med = statistics.median(v.times)
        paired = statistics.median(t / b for t, b in zip(v.times, bare.times, strict=True))
        print(
            f"{v.name:<36} {med * 1e3:>10.0f} {paired:>7.3f} {med / base_median:>8.3f} "
            f"{statistics.fmean(v.times) / base_mean:>6.3f} {statistics.median(v.faults):>7.0f}"
        )


def bytes_per_value(variants: list[Variant]) -> None:
    for v in variants:
        if v.recorder is None:
            continue
        path = Path(v.recorder.path)
        v.recorder.close()
        with gradscope.open_run(path) as run:
            values = len(run.steps) * len(run.layers) * len(run.stats)
            cells = len(run.steps) * len(run.layers)
        size = path.stat().st_size
        print(
            f"{v.name:<36} {size / 1e3:8.1f} kB on disk, {len(run.stats)} stats: "
            f"{size / cells:.1f} bytes per layer per record ({size / values:.2f} per value)"
        )


def resnet56_rounds(args, folder: Path) -> None:
    torch.manual_seed(0)
    base = create_model("resnet56")
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    variants = [
        Variant("bare", copy.deepcopy(base)),
        Variant("bare again (A/A control)", copy.deepcopy(base)),
        Variant("all stats, every=1", copy.deepcopy(base), recorded(folder, every=1)),
        Variant("all stats, every=10", copy.deepcopy(base), recorded(folder, every=10)),
        Variant(
            "parameter stats, every=1",
            copy.deepcopy(base),
            recorded(folder, every=1, stats=list(PARAM_STATS)),
        ),
        Variant("naive .abs().mean().item() loop", copy.deepcopy(base), naive_probe),
    ]
    run_rounds(variants, x, y, args.steps, args.warmup)
    report(variants, f"ResNet-56, batch {args.batch}, CPU ({torch.get_num_threads()} threads)")
    print()
    bytes_per_value(variants)


def resnet1202_rounds(args, folder: Path) -> None:
    folder = folder / "resnet1202"
    folder.mkdir()
    torch.manual_seed(0)
    base = create_model("resnet1202")
    x = torch.randn(32, 3, 32, 32)
    y = torch.randint(0, 10, (32,))
    variants = [
        Variant("bare", copy.deepcopy(base)),
        Variant("bare again (A/A control)", copy.deepcopy(base)),
        Variant("all stats, every=1", copy.deepcopy(base), recorded(folder, every=1)),
    ]
    for rows in args.batch_sample_1202:
        setup = recorded(folder, every=1, batch_sample=rows)
        variants.append(
            Variant(f"all stats, every=1, batch_sample={rows}", copy.deepcopy(base), setup)
        )
    run_rounds(variants, x, y, args.steps_1202, 1)
    report(variants, "ResNet-1202, batch 32, CPU")
    bytes_per_value(variants)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed rounds for ResNet-56")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=128, help="ResNet-56 batch size")
    parser.add_argument("--steps-1202", type=int, default=10, help="timed rounds for ResNet-1202")
    parser.add_argument(
        "--batch-sample-1202",
        type=int,
        nargs="*",
        default=[],
        metavar="ROWS",
        help="also time ResNet-1202 recorded with these batch_sample values",
    )
    parser.add_argument("--skip-1202", action="store_true", help="only ResNet-56")
    parser.add_argument("--skip-56", action="store_true", help="only ResNet-1202")
    parser.add_argument(
        "--steady-heap",
        action="store_true",
        help="keep freed memory in glibc's heap, so no variant pays page faults for it",
    )
    args = parser.parse_args()
    if args.steady_heap:
        steady_heap()
    heap = "steady heap (no trimming, mmap above 32 MB)" if args.steady_heap else "default heap"
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, gradscope {gradscope.__version__}, "
        f"{heap}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_56:
            resnet56_rounds(args, Path(tmp))
        if not args.skip_1202:
            resnet1202_rounds(args, Path(tmp))


if __name__ == "__main__":
    main()
