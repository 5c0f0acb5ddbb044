"""How long `gradscope probe` takes: the pair at initialization, and a width sweep.

    python benchmarks/probe.py                    # both goals below, on the CPU (~6-8 min)
    python benchmarks/probe.py --skip-sweep       # the pair only (~1 min)
    python benchmarks/probe.py --batch-size 4 --widths 2,4 --steps 1 --rounds 1   # it runs

Goals (issue 28): `gradscope probe resnet56 plain56` at batch 128 under 10 s, and a 3-width
sweep of resnet20 at 20 steps under 2 minutes, on a 2-core CPU. Each is timed as a user runs
it, the command in a fresh process (torch's import included), and in this process beside a
bare twin: the same models, batches and SGD steps without gradscope, alternated with the probe
round by round so that drifts in machine speed hit both alike; the paired ratio (probe / bare,
median over rounds) is what the probe's hooks, recorder and file cost on top of the steps.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gradscope
from gradscope.models import create_model

SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}  # gradscope probe's default steps


def get_args_parser() -> argparse.ArgumentParser:
    """The benchmark's knobs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet56,plain56", help="the pair at init")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--sweep-model", default="resnet20", help="the model swept")
    parser.add_argument(
        "--widths",
        default="8,16,32",
        help="widths swept: first-stage channels (16 is the paper's; default: half, the "
        "paper's and double)",
    )
    parser.add_argument("--steps", type=int, default=20, help="sweep steps after init")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the pair")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--skip-sweep", action="store_true", help="time the pair only")
    parser.add_argument(
        "--skip-cli", action="store_true", help="no fresh-process runs of the command"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return parser


def gaussian(batch_size: int, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(batch_size, 3, 32, 32, generator=generator)
    return x, torch.randint(10, (batch_size,), generator=generator)


def bare_steps(model: torch.nn.Module, batch_size: int, steps: int) -> None:
    """What the probe does without gradscope: forward, loss, backward, SGD step."""
    opt = torch.optim.SGD(model.parameters(), **SGD)
    model.train()
    for step in range(steps + 1):
        x, y = gaussian(batch_size, step)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _each(models: dict, fn):
    """A function calling `fn` on each model in turn."""
    return lambda: [fn(model) for model in models.values()]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def command_seconds(args: list[str], folder: str) -> float:
    """Wall time of `gradscope ARGS` in a fresh process, as a user runs it."""
    env = {**os.environ}
    if os.environ.get("BENCH_THREADS"):
        env["OMP_NUM_THREADS"] = os.environ["BENCH_THREADS"]
    command = [sys.executable, "-m", "gradscope", *args, "--out", folder]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def pair(args, folder: str) -> dict:
    """The pair at initialization: probe against bare, alternated, then the command."""
    names = args.models.split(",")
    probe, bare = [], []
    for round_ in range(args.rounds + 1):  # round 0 warms up (numba, allocator) and is dropped
        models = {}
        for name in names:
            torch.manual_seed(0)
            models[name] = create_model(name)
        probe_all = _each(models, lambda m: gradscope.probe(m, batch_size=args.batch_size).close())
        bare_all = _each(models, lambda m: bare_steps(m, args.batch_size, 0))
        if round_ % 2:  # alternate which goes first
            p, b = timed(probe_all), timed(bare_all)
        else:
            b, p = timed(bare_all), timed(probe_all)
        if round_:
            probe.append(p)
            bare.append(b)
    out = {
        "models": names,
        "batch_size": args.batch_size,
        "probe_seconds": statistics.median(probe),
        "bare_seconds": statistics.median(bare),
        "paired_ratio": statistics.median(p / b for p, b in zip(probe, bare, strict=True)),
    }
    if not args.skip_cli:
        command = ["probe", *names, "--batch-size", str(args.batch_size)]
        out["command_seconds"] = command_seconds(command, folder)
    return out


def sweep(args, folder: str) -> dict:
    """The width sweep: the command in a fresh process, then in this one against bare."""
    widths = [int(w) for w in args.widths.split(",")]
    out = {"model": args.sweep_model, "widths": widths, "steps": args.steps}
    if not args.skip_cli:
        command = ["probe", args.sweep_model, "--widths", args.widths, "--steps", str(args.steps)]
        command += ["--batch-size", str(args.batch_size)]
        out["command_seconds"] = command_seconds(command, folder)

    def factory(width):
        return create_model(args.sweep_model, width=width)

    out["probe_seconds"] = timed(
        lambda: gradscope.probe(
            factory, steps=args.steps, widths=widths, batch_size=args.batch_size
        ).close()
    )
    out["bare_seconds"] = sum(
        timed(lambda w=w: bare_steps(factory(w), args.batch_size, args.steps)) for w in widths
    )
    out["ratio"] = out["probe_seconds"] / out["bare_seconds"]
    return out


def report(results: dict) -> str:
    lines = []
    if "pair" in results:
        r = results["pair"]
        lines.append(
            f"pair {' + '.join(r['models'])} at batch {r['batch_size']}: probe "
            f"{r['probe_seconds']:.2f} s in process, bare steps {r['bare_seconds']:.2f} s, "
            f"paired ratio {r['paired_ratio']:.2f}"
            + (f"; the command {r['command_seconds']:.1f} s" if "command_seconds" in r else "")
            + " (goal: the command under 10 s)"
        )
    if "sweep" in results:
        r = results["sweep"]
        lines.append(
            f"sweep {r['model']} widths {','.join(map(str, r['widths']))}, {r['steps']} steps: "
            f"probe {r['probe_seconds']:.1f} s in process, bare {r['bare_seconds']:.1f} s, "
            f"ratio {r['ratio']:.2f}"
            + (f"; the command {r['command_seconds']:.1f} s" if "command_seconds" in r else "")
            + " (goal: the command under 120 s)"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Run the benchmark, print its table and return the figures."""
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["BENCH_THREADS"] = str(args.threads)
    results = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="gradscope-probe-bench-") as folder:
        results["pair"] = pair(args, folder)
        if not args.skip_sweep:
            results["sweep"] = sweep(args, folder)
    print(f"gradscope probe on {results['threads']} torch threads")
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
