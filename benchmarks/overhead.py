"""Recorder overhead: step-time ratios of recorded vs bare models, interleaved in one process.

    python benchmarks/overhead.py                 # ResNet-56 (batch 128) and ResNet-1202 (batch 32)
    python benchmarks/overhead.py --steps 10 --skip-1202   # a quick look
    python benchmarks/overhead.py --skip-56 --steps-1202 20  # ResNet-1202 only, 20 rounds
    python benchmarks/overhead.py --device-path   # what a GPU runs, on CPU: ResNet-56, batch 4
    python benchmarks/overhead.py --compile       # under torch.compile: ResNet-20 and -56, batch 32

`--compile` times compiled models, each variant in its own process (see overhead_compiled.py):
compiled recorded against compiled bare, eager beside them, and the compile time each adds.

`--device-path` sets GRADSCOPE_KERNELS=torch (the device-generic path, the compiled fused
reductions a CUDA device runs, here through inductor's C++ backend) and one thread, and times
ResNet-56 at batch 4, where a step is bound by the number of ops launched, as a small net on a
GPU is. It also counts the device ops a record adds per watched layer (`device_ops`) and those
the non-finite watch adds to a step that records nothing (`watch_ops`).

The recorder's variants run with attach's default `nonfinite="watch"` (the flight recorder's
check at every update); the "nonfinite=off" rows are the same without it, so the pair of rows
at each `every` shows what the watch costs.

Every variant trains its own copy of the model on the same preloaded batch; one round steps the
bare twin, then each variant, so drifts in machine speed hit all of them alike. The ratio is
median over rounds of (variant step time / bare step time in that round), with a 95% interval
for that median (distribution-free: the sign test's order statistics) that shows how far the
machine's noise reaches: a goal inside it is not told apart from the noise. The ratio of the
median step times and that of the means are given too (for `every=10` the mean counts the one
recorded step in ten, which the medians hide).

On CPU, glibc gives freed activation memory back to the OS and faults it in again on the next
step, tens of thousands of page faults per ResNet-56 step, in amounts that depend on the heap's
layout and so differ from variant to variant at random (bare steps included). The "faults"
column shows the median per step. `--steady-heap` sets glibc's trim and mmap thresholds for this
process (as MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ would), so no variant pays those
faults and the ratios show the recorder's own cost.

"all but unit stats, every=1" records every statistic but act_pos_frac, act_grad_zero_frac and
weight_frozen_frac: its ratio beside "all stats, every=1" (same rounds) is what those cost.

`--floors` adds two variants that bound what any hook-based recorder can cost on this machine:
"floor: hooks alone" puts a no-op forward hook on each module gradscope watches, and a no-op hook
on each output (the dispatch alone); "floor: reads alone" has those hooks do only the reads the
exact statistics need (each output's sampled rows and each output gradient, read once), with no
bookkeeping, no record and no parameter statistics. A goal below the second is out of reach.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import json
import math
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gradscope
from gradscope.data import resolve_device
from gradscope.models import create_model
from gradscope.recorder import ALL_STATS, PARAM_STATS
from gradscope.recorder import _stats as S
from gradscope.recorder._kernels import SAMPLE_GROUP_BYTES, kernel_choice
from gradscope.recorder._layer_selection import select_modules
from gradscope.recorder._recorder import DEFAULT_BATCH_SAMPLE

# Set by main(): where the models train and whether in bf16 autocast + channels_last.
DEVICE = torch.device("cpu")
AMP = False


class Variant:
    """One model copy with its optimizer, and optionally a recorder or the naive probe."""

    def __init__(self, name, model, setup=None):
        self.name = name
        memory_format = torch.channels_last if AMP else torch.preserve_format
        self.model = model.to(DEVICE, memory_format=memory_format)
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.times: list[float] = []
        self.faults: list[int] = []  # minor page faults of the process during each step
        self.recorder = setup(self) if setup else None

    def step(self, x, y) -> None:
        cuda = DEVICE.type == "cuda"
        if cuda:
            torch.cuda.synchronize()  # time this step only
        faults = _minor_faults()
        start = time.perf_counter()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=AMP):
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
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


def floor(reads: bool):
    """A floor variant's hooks on the modules gradscope watches (see the module's docstring).

    The reads are the recorder's own kernels: on CPU (kernel mode auto) the one-pass numba sums
    of each output's first rows and a dot of each gradient; on the device path a copy of those
    rows into a reused buffer (one row per output, as the recorder keeps them until the record)
    and a norm of each gradient."""

    def setup(variant: Variant):
        device_path = not kernel_choice().numba_for(DEVICE)  # as the recorders choose
        slot = torch.zeros((), device=DEVICE)
        sums = torch.zeros(S.ACT_SUMS_SIZE).numpy()
        copies: dict[int, list] = {}  # numel -> [buffer rows, next row]
        if not device_path:
            from gradscope.recorder._cpu_kernels import sums_into

        def read_output(t: torch.Tensor) -> None:
            if not device_path:
                sums_into(S.host_sample([t], DEFAULT_BATCH_SAMPLE), sums)
                return
            t = t.detach()[:DEFAULT_BATCH_SAMPLE]
            ring = copies.get(t.numel())
            if ring is None:
                rows = max(1, SAMPLE_GROUP_BYTES // (4 * t.numel()))
                buffer = torch.empty((rows, *t.shape), device=DEVICE)
                ring = copies[t.numel()] = [list(buffer.unbind()), 0]
            ring[0][ring[1]].copy_(t)
            ring[1] = (ring[1] + 1) % len(ring[0])

        def read_grad(g: torch.Tensor) -> None:
            if device_path:
                torch.linalg.vector_norm(g, 2, dtype=torch.float32, out=slot)
            else:
                flat = g.reshape(-1)
                torch.dot(flat, flat, out=slot)

        def no_op(grad) -> None:
            return None

        def forward_hook(module, inputs, output):
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor)):
                return
            if reads:
                read_output(output)
            if output.requires_grad:
                output.register_hook(read_grad if reads else no_op)

        for _, module in select_modules(variant.model):
            module.register_forward_hook(forward_hook)
        return None

    return setup


def floor_variants(args, base) -> list[Variant]:
    """The two floor variants when --floors asks for them."""
    if not args.floors:
        return []
    return [
        Variant("floor: hooks alone", copy.deepcopy(base), floor(reads=False)),
        Variant("floor: reads alone", copy.deepcopy(base), floor(reads=True)),
    ]


# The statistics read per unit or per parameter flag: "all stats" against this variant, in the
# same rounds, is what they cost.
UNIT_STATS = ("act_pos_frac", "act_grad_zero_frac", "weight_frozen_frac")


def without_unit_stats(folder: Path, base) -> Variant:
    """All statistics but the per-unit ones and weight_frozen_frac, every step."""
    stats = [s for s in ALL_STATS if s not in UNIT_STATS]
    return Variant(
        "all but unit stats, every=1", copy.deepcopy(base), recorded(folder, every=1, stats=stats)
    )


def recorded(folder: Path, **attach_kwargs):
    def setup(variant: Variant):
        path = folder / f"{variant.name.replace(' ', '_').replace('=', '')}.h5"
        return gradscope.attach(variant.model, path, optimizer=variant.opt, **attach_kwargs)

    return setup


def where() -> str:
    """The device (and precision) the models train on, as the reports say it."""
    if DEVICE.type == "cuda":
        name = torch.cuda.get_device_name(DEVICE)
        return f"{name}, {'bf16 autocast, channels_last' if AMP else 'float32'}"
    return f"CPU ({torch.get_num_threads()} threads)"


def batch(size: int):
    """A random CIFAR-shaped batch on the benchmark's device."""
    x = torch.randn(size, 3, 32, 32).to(DEVICE)
    if AMP:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (size,)).to(DEVICE)


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


RESULTS: list[dict] = []  # every report, for --json


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of `values`: the order statistics whose
    sign-test coverage is at least `confidence` (from 6 values up; below that, the whole range)."""
    ordered = sorted(values)
    n = len(ordered)
    tail = (1 - confidence) / 2
    lower, below = 0, 0.0
    for k in range(n // 2):
        below += math.comb(n, k) / 2**n  # P(at most k of n values fall below the median)
        if below > tail:
            break
        lower = k  # [ordered[k], ordered[n - 1 - k]] covers it with 1 - 2 * below
    return ordered[lower], ordered[n - 1 - lower]


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
        f"{'variant':<36} {'median ms':>10} {'paired':>7} {'95% interval':>13} {'medians':>8} "
        f"{'means':>6} {'faults':>7}"
    )
    result = {"title": title, "bare_ms": base_median * 1e3, "variants": {}}
    RESULTS.append(result)
    for v in variants[1:]:
        med = statistics.median(v.times)
        ratios = [t / b for t, b in zip(v.times, bare.times, strict=True)]
        paired = statistics.median(ratios)
        low, high = median_interval(ratios)
        result["variants"][v.name] = {
            "median_ms": med * 1e3,
            "paired": paired,
            "paired_interval": [low, high],
            "ratios": ratios,
        }
        print(
            f"{v.name:<36} {med * 1e3:>10.0f} {paired:>7.3f} {f'{low:.3f}-{high:.3f}':>13} "
            f"{med / base_median:>8.3f} {statistics.fmean(v.times) / base_mean:>6.3f} "
            f"{statistics.median(v.faults):>7.0f}"
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
    x, y = batch(args.batch)
    variants = [
        Variant("bare", copy.deepcopy(base)),
        Variant("bare again (A/A control)", copy.deepcopy(base)),
        *watch_variants(base, folder),
        without_unit_stats(folder, base),
        Variant(
            "parameter stats, every=1",
            copy.deepcopy(base),
            recorded(folder, every=1, stats=list(PARAM_STATS)),
        ),
        Variant("naive .abs().mean().item() loop", copy.deepcopy(base), naive_probe),
        *floor_variants(args, base),
    ]
    run_rounds(variants, x, y, args.steps, args.warmup)
    report(variants, f"ResNet-56, batch {args.batch}, {where()}")
    if args.count_ops:
        per_layer, bare_ops, recorded_ops = device_ops(base, x, y, folder / "ops")
        RESULTS[-1]["device_ops_per_layer"] = per_layer
        print(f"device ops per watched layer per record: {per_layer:.2f}")
        RESULTS[-1]["watch_ops_per_step"] = watch_ops(base, x, y, folder / "watch-ops")
        print(f"device ops the non-finite watch adds per step: {RESULTS[-1]['watch_ops_per_step']}")
    print()
    bytes_per_value(variants)


# ATen ops that launch no kernel (views and metadata): not counted as device ops.
METADATA_OPS = {
    "aten::alias",
    "aten::as_strided",
    "aten::detach",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::expand",
    "aten::lift_fresh",
    "aten::permute",
    "aten::reshape",
    "aten::resize_",
    "aten::select",
    "aten::slice",
    "aten::squeeze",
    "aten::t",
    "aten::transpose",
    "aten::unbind",
    "aten::unsqueeze",
    "aten::view",
    "aten::_unsafe_view",
}
COMPILED_KERNEL_MARKS = ("cpp_fused", "triton_")  # inductor's kernel events (C++, Triton)
COMPILED_GRAPH_MARK = "## Call CompiledFxGraph"  # a compiled graph call (CPU: no kernel events)


def _is_noop_to(event) -> bool:
    """`.to()` / `.type_as()` that returned its input: no copy, no kernel."""
    return event.name == "aten::to" and not any(
        child.name == "aten::_to_copy" for child in event.cpu_children
    )


def _has_kernel_events(event) -> bool:
    """Whether the profiler saw the compiled kernels under `event` (then they are counted)."""
    return any(
        any(mark in child.name for mark in COMPILED_KERNEL_MARKS) or _has_kernel_events(child)
        for child in event.cpu_children
    )


def count_device_ops(events) -> int:
    """Top-level ATen ops that launch work (no ATen op above them), plus each kernel that
    inductor runs inside a compiled region (a compiled graph whose kernels the profiler does not
    show, as on CPU, counts as one)."""
    count = 0
    for event in events:
        if any(mark in event.name for mark in COMPILED_KERNEL_MARKS):
            count += 1
            continue
        if event.name.startswith(COMPILED_GRAPH_MARK) and not _has_kernel_events(event):
            count += 1  # its fused C++ loops run as one call, unseen by the profiler
            continue
        if not event.name.startswith("aten::") or event.name in METADATA_OPS or _is_noop_to(event):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            count += 1
    return count


def watch_variants(base, folder: Path) -> list[Variant]:
    """Every statistic at every=1 and every=10, each with the non-finite watch (attach's
    default) and without it."""
    variants = []
    for every in (1, 10):
        for watch in (True, False):
            name = f"all stats, every={every}" + ("" if watch else ", nonfinite=off")
            setup = recorded(folder, every=every, nonfinite="watch" if watch else "off")
            variants.append(Variant(name, copy.deepcopy(base), setup))
    return variants


def profiled_ops(base, x, y, setup, name: str) -> tuple[int, Variant]:
    """Device ops of one step of a copy of `base` (after two warm steps), and its variant."""
    from torch.profiler import ProfilerActivity, profile

    variant = Variant(name, copy.deepcopy(base), setup)
    for _ in range(2):  # warm: compiled kernels, buffers grown
        variant.step(x, y)
    # CPU-side events only: each op or kernel launch once (GPU events would repeat them)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        variant.step(x, y)
    if variant.recorder is not None:
        variant.recorder.close()
    return count_device_ops(prof.events()), variant


def device_ops(base, x, y, folder: Path) -> tuple[float, int, int]:
    """(device ops a record adds per watched layer, bare step ops, recorded step ops); the
    record without the non-finite watch, whose ops are per step (`watch_ops`)."""
    bare_ops, _ = profiled_ops(base, x, y, None, "ops bare")
    setup = recorded(folder, every=1, nonfinite="off")
    recorded_ops, variant = profiled_ops(base, x, y, setup, "ops recorded")
    layers = len(variant.recorder.layer_names)
    return (recorded_ops - bare_ops) / layers, bare_ops, recorded_ops


def watch_ops(base, x, y, folder: Path) -> int:
    """Device ops the non-finite watch adds to a step that records nothing (every=1000: the
    profiled third step is not recorded), in all, not per layer."""
    counts = []
    for nonfinite in ("off", "watch"):
        setup = recorded(folder, every=1000, nonfinite=nonfinite)
        ops, _ = profiled_ops(base, x, y, setup, f"ops every=1000 nonfinite={nonfinite}")
        counts.append(ops)
    return counts[1] - counts[0]


def device_path_rounds(args, folder: Path) -> None:
    torch.manual_seed(0)
    base = create_model("resnet56")
    x, y = batch(args.batch)
    per_layer, bare_ops, recorded_ops = device_ops(base, x, y, folder / "ops")
    added = watch_ops(base, x, y, folder / "watch-ops")
    variants = [
        Variant("bare", copy.deepcopy(base)),
        Variant("bare again (A/A control)", copy.deepcopy(base)),
        *watch_variants(base, folder),
        without_unit_stats(folder, base),
        *floor_variants(args, base),
    ]
    run_rounds(variants, x, y, args.steps, args.warmup)
    report(variants, f"ResNet-56, batch {args.batch}, device path on CPU (1 thread)")
    RESULTS[-1]["device_ops_per_layer"] = per_layer
    RESULTS[-1]["watch_ops_per_step"] = added
    print(
        f"\ndevice ops per watched layer per record: {per_layer:.2f} "
        f"(bare step {bare_ops} ops, recorded step {recorded_ops})"
    )
    print(f"device ops the non-finite watch adds per step (not per layer): {added}")
    print()
    bytes_per_value(variants)


def resnet1202_rounds(args, folder: Path) -> None:
    folder = folder / "resnet1202"
    folder.mkdir()
    torch.manual_seed(0)
    base = create_model("resnet1202")
    x, y = batch(32)
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
    variants += floor_variants(args, base)
    run_rounds(variants, x, y, args.steps_1202, 1)
    report(variants, f"ResNet-1202, batch 32, {where()}")
    bytes_per_value(variants)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed rounds for ResNet-56")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="ResNet-56 batch size (default 128; 4 with --device-path)",
    )
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
        "--device-path",
        action="store_true",
        help="GRADSCOPE_KERNELS=torch, one thread, ResNet-56 at batch 4: the GPU's regime on CPU",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast and channels_last (as the trainer on CUDA)",
    )
    parser.add_argument(
        "--count-ops", action="store_true", help="also count the device ops a record adds per layer"
    )
    parser.add_argument(
        "--floors",
        action="store_true",
        help="also time hooks alone, and hooks doing only the statistics' reads (lower bounds)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile'd models, each variant in its own process (overhead_compiled.py)",
    )
    parser.add_argument(
        "--models", nargs="+", default=["resnet20", "resnet56"], help="--compile: models to time"
    )
    parser.add_argument("--rounds", type=int, default=5, help="--compile: rounds of variants")
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="--compile: torch.compile's mode (default, max-autotune-no-cudagraphs, ...)",
    )
    parser.add_argument(
        "--backend",
        default="inductor",
        help="--compile: torch.compile's backend (aot_eager: quick)",
    )
    parser.add_argument("--no-eager", action="store_true", help="--compile: skip the eager rows")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="--compile: seconds allowed to one process"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument(
        "--steady-heap",
        action="store_true",
        help="keep freed memory in glibc's heap, so no variant pays page faults for it",
    )
    args = parser.parse_args()
    global DEVICE, AMP
    if args.device_path and args.device != "cpu":
        raise SystemExit("--device-path runs on the CPU (it stands in for a GPU); drop --device")
    DEVICE = resolve_device(args.device)
    AMP = args.amp
    if args.compile:
        compiled_main(args)
        return
    if args.batch is None:
        args.batch = 4 if args.device_path else 128
    if args.device_path:
        os.environ["GRADSCOPE_KERNELS"] = "torch"  # read by each recorder at attach
        torch.set_num_threads(1)
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # inductor's kernels show in profiles
    if args.steady_heap:
        steady_heap()
    heap = "steady heap (no trimming, mmap above 32 MB)" if args.steady_heap else "default heap"
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, gradscope {gradscope.__version__}, "
        f"{heap}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.device_path:
            device_path_rounds(args, Path(tmp))
        else:
            if not args.skip_56:
                resnet56_rounds(args, Path(tmp))
            if not args.skip_1202:
                resnet1202_rounds(args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": RESULTS}, indent=2) + "\n")


def compiled_main(args) -> None:
    """--compile: every variant of every model in its own process, figures printed (and JSON)."""
    from overhead_compiled import compiled_overhead

    if args.device_path:
        raise SystemExit("--compile times the kernels the recorder picks; drop --device-path")
    args.batch = args.batch or 32
    args.mode = args.compile_mode
    args.steps = max(10, round(args.steps / 10) * 10)  # whole 10-step cycles (every=10)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, gradscope {gradscope.__version__}")
    where_run = "CPU (1 thread)" if DEVICE.type == "cpu" else where()
    RESULTS.extend(compiled_overhead(args, median_interval, where_run))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": RESULTS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
