"""Recorder overhead under torch.compile: each variant in its own process, paired by round.

    python benchmarks/overhead.py --compile                  # ResNet-20 and ResNet-56, CPU
    python benchmarks/overhead.py --compile --models resnet20 --rounds 3 --steps 20
    python benchmarks/overhead.py --compile --steady-heap   # no glibc page-fault noise

Dynamo's caches and compiled code live in the process, so every variant (compiled bare,
compiled and recorded every=1 and every=10, and the eager ones beside them) runs in a process
of its own, one after another within a round, in an order that rotates from round to round.
A variant's ratio is the median over rounds of (its step time / the compiled bare step time
of the same round), with the sign test's 95% interval for that median; "median" ratios compare
median steps (a non-recorded step, for every=10), "mean" ratios mean steps over whole
10-step cycles (the record's cost spread over them).

Each variant has an inductor cache folder of its own for the whole run: its first round
compiles cold, the later ones find its code cached (warm). "compile s" is the first steps'
time beyond a steady step: the first step's (and for every=10 the second's, the non-recorded
graph's) against the compiled bare model's first step. Each process also counts the graphs
dynamo compiled, its graph breaks, and the compiles after warm-up (recompiles: 0 expected).
On CPU each process runs one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, compiled, every): every=None is a bare model
VARIANTS = (
    ("compiled bare", True, None),
    ("compiled, every=1", True, 1),
    ("compiled, every=10", True, 10),
    ("eager bare", False, None),
    ("eager, every=1", False, 1),
    ("eager, every=10", False, 10),
)
BARE = "compiled bare"
WARMUP = 12  # untimed steps: both graphs of every=10 compile in the first two


def measure(args) -> dict:
    """One variant in this process: step times, compile time, graphs and graph breaks."""
    import torch
    import torch.nn.functional as F
    from torch._dynamo.utils import counters

    import gradscope
    from gradscope.data import resolve_device
    from gradscope.models import create_model

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.amp else torch.preserve_format
    model = create_model(args.model).to(device, memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch,), device=device)
    recorder = None
    if args.every is not None:
        path = Path(args.folder) / f"{args.model}-{args.variant_index}.h5"
        recorder = gradscope.attach(model, path, optimizer=opt, every=args.every, overwrite=True)
    forward = model
    if args.compiled:
        forward = torch.compile(model, backend=args.backend, mode=args.mode)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = [step() for _ in range(WARMUP)]
    graphs_warm = counters["stats"]["unique_graphs"]
    times = [step() for _ in range(args.steps)]
    if recorder is not None:
        recorder.close()
    steady = statistics.median(times)
    return {
        "median_s": steady,
        "mean_s": statistics.fmean(times),
        "compile_s": max(0.0, first[0] - steady) + max(0.0, first[1] - steady),
        "graphs": graphs_warm,
        "recompiles": counters["stats"]["unique_graphs"] - graphs_warm,
        "graph_breaks": sum(counters["graph_break"].values()),
    }


def run_variant(args, index: int, cache: Path, folder: Path) -> dict:
    """Measure VARIANTS[index] in a process of its own (its own inductor cache folder)."""
    name, compiled, every = VARIANTS[index]
    command = [
        sys.executable, __file__, "--child", "--model", args.model, "--batch", str(args.batch),
        "--steps", str(args.steps), "--device", args.device, "--backend", args.backend,
        "--mode", args.mode or "default", "--variant-index", str(index), "--folder", str(folder),
    ] + (["--amp"] if args.amp else [])  # fmt: skip
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    if args.steady_heap:  # what overhead.py's --steady-heap sets with mallopt, for a new process
        env.update(MALLOC_TRIM_THRESHOLD_="2147483647", MALLOC_MMAP_THRESHOLD_="33554432")
    if args.device != "cpu":
        env.pop("OMP_NUM_THREADS")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"{name} ({args.model}) failed:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rounds(args, model: str, work: Path) -> list[dict[str, dict]]:
    """`args.rounds` rounds of every variant of `model`: per round, name -> measurement."""
    args.model = model
    chosen = [i for i, (_, compiled, _) in enumerate(VARIANTS) if compiled or not args.no_eager]
    results = []
    for r in range(args.rounds):
        order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
        measured = {}
        for index in order:
            cache = work / "cache" / model / str(index)  # one folder per variant, all rounds
            cache.mkdir(parents=True, exist_ok=True)
            measured[VARIANTS[index][0]] = run_variant(args, index, cache, work)
            print(f"  round {r + 1}/{args.rounds}: {VARIANTS[index][0]} done", flush=True)
        results.append(measured)
    return results


def summary(results: list[dict[str, dict]], median_interval) -> dict:
    """Per variant, over rounds: paired ratios to the compiled bare model (medians and means,
    with the median's interval), step time, compile time cold and warm, graphs, breaks."""
    bare = [r[BARE] for r in results]
    bare_compile = bare[0]["compile_s"]
    out = {"bare_ms": statistics.median(b["median_s"] for b in bare) * 1e3, "variants": {}}
    for name in results[0]:
        runs = [r[name] for r in results]
        paired = [v["median_s"] / b["median_s"] for v, b in zip(runs, bare, strict=True)]
        paired_mean = [v["mean_s"] / b["mean_s"] for v, b in zip(runs, bare, strict=True)]
        low, high = median_interval(paired)
        warm = [v["compile_s"] for v in runs[1:]]
        out["variants"][name] = {
            "median_ms": statistics.median(v["median_s"] for v in runs) * 1e3,
            "paired": statistics.median(paired),
            "paired_interval": [low, high],
            "paired_mean": statistics.median(paired_mean),
            "compile_s": runs[0]["compile_s"],
            "compile_ratio": runs[0]["compile_s"] / bare_compile if bare_compile else None,
            "compile_warm_s": statistics.median(warm) if warm else None,
            "graphs": runs[0]["graphs"],
            "graph_breaks": max(v["graph_breaks"] for v in runs),
            "recompiles": max(v["recompiles"] for v in runs),
        }
    return out


def print_summary(title: str, figures: dict) -> None:
    print(f"\n{title}: compiled bare step median {figures['bare_ms']:.1f} ms")
    print(
        f"{'variant':<20} {'median ms':>9} {'paired':>7} {'95% interval':>13} {'mean':>6} "
        f"{'compile s':>9} {'vs bare':>7} {'warm s':>6} {'graphs':>6} {'breaks':>6} "
        f"{'recompiles':>10}"
    )
    for name, v in figures["variants"].items():
        ratio = "-" if v["compile_ratio"] is None else f"{v['compile_ratio']:.2f}"
        warm = "-" if v["compile_warm_s"] is None else f"{v['compile_warm_s']:.1f}"
        interval = f"{v['paired_interval'][0]:.3f}-{v['paired_interval'][1]:.3f}"
        print(
            f"{name:<20} {v['median_ms']:>9.1f} {v['paired']:>7.3f} {interval:>13} "
            f"{v['paired_mean']:>6.3f} {v['compile_s']:>9.1f} {ratio:>7} {warm:>6} "
            f"{v['graphs']:>6} {v['graph_breaks']:>6} {v['recompiles']:>10}"
        )


def compiled_overhead(args, median_interval, where: str) -> list[dict]:
    """Every model's rounds, printed; returns the figures (one dict per model) for --json."""
    mode = args.mode or "default"
    print(
        f"compiled: backend {args.backend}, mode {mode}; {args.rounds} rounds of {args.steps} "
        f"steps after {WARMUP} warm-up steps, each variant in its own process"
    )
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            figures = summary(rounds(args, model, Path(tmp)), median_interval)
            title = f"{model}, batch {args.batch}, {where}, torch.compile {args.backend} {mode}"
            print_summary(title, figures)
            runs.append({"title": title, **figures})
    return runs


def child_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    for flag in ("--model", "--device", "--backend", "--mode", "--folder"):
        parser.add_argument(flag)
    for flag in ("--batch", "--steps", "--variant-index"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    _, args.compiled, args.every = VARIANTS[args.variant_index]
    args.mode = None if args.mode == "default" else args.mode
    print(json.dumps(measure(args)))


if __name__ == "__main__":
    child_main()
