"""Benchmark: resident memory of a long recorded run beside a bare twin (does it grow per record?).

A small model (a 40-layer MLP of width 64) trains `--steps` steps (default 50,000) with every
statistic recorded at every step, in one process, and the same loop without gradscope in
another, at the same time. Each prints its resident memory (RSS, /proc) at 2%, 20%, 50% and
100% of the steps (1k, 10k, 25k and 50k by default); this prints both side by side, the growth
of each between the first and the last point, the recorded run's growth beyond the bare one's
per 100,000 records (goal: under 1 MB), and the run file's size.

    python benchmarks/longrun.py               # 50,000 steps: about 10 minutes alone on 2 cores
    python benchmarks/longrun.py --steps 2000  # a quick check
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKPOINTS = (0.02, 0.2, 0.5, 1.0)  # fractions of the steps where memory is reported
GOAL_MB_PER_100K = 1.0
DEPTH, WIDTH, BATCH = 40, 64, 32


def resident_mb() -> float:
    """This process's resident memory in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def checkpoints(steps: int) -> list[int]:
    """The steps after which memory is reported."""
    return sorted({max(1, round(steps * f)) for f in CHECKPOINTS})


def train(kind: str, steps: int, path: Path) -> None:
    """Train the MLP `steps` steps (recorded into `path` or bare), printing a JSON line with
    the resident memory at each checkpoint."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(WIDTH, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(BATCH, WIDTH), torch.randint(0, 10, (BATCH,))
    rec = None
    if kind == "recorded":
        import gradscope

        rec = gradscope.attach(model, path, optimizer=opt, every=1)
    marks = set(checkpoints(steps))
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.log(loss=loss.item())
        if step in marks:
            seconds = time.perf_counter() - start
            print(json.dumps({"step": step, "rss_mb": resident_mb(), "seconds": seconds}))
            sys.stdout.flush()
    if rec is not None:
        rec.close()


def run_twins(steps: int, folder: Path) -> dict[str, list[dict]]:
    """Start the recorded and the bare process together; their checkpoint lines by kind."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = {
        kind: subprocess.Popen(
            [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--out", folder],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for kind in ("recorded", "bare")
    }
    lines = {}
    for kind, child in children.items():
        out, _ = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"the {kind} run failed (exit {child.returncode})")
        lines[kind] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines


def main(argv=None) -> int:
    """Run both twins, print the table; exit 1 when the growth per record is over the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000, help="training steps (records)")
    parser.add_argument("--child", choices=("recorded", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error("--steps must be at least 10")
    if args.child:
        train(args.child, args.steps, args.out / "longrun.h5")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        lines = run_twins(args.steps, Path(folder))
        size = (Path(folder) / "longrun.h5").stat().st_size
    recorded, bare = lines["recorded"], lines["bare"]
    print(f"{DEPTH}-layer MLP (width {WIDTH}, batch {BATCH}), every statistic at every step")
    print(f"{'step':>8} {'recorded RSS':>13} {'bare RSS':>10} {'difference':>11}")
    for r, b in zip(recorded, bare, strict=True):
        diff = r["rss_mb"] - b["rss_mb"]
        print(f"{r['step']:>8,} {r['rss_mb']:>10.1f} MB {b['rss_mb']:>7.1f} MB {diff:>+8.1f} MB")
    records = recorded[-1]["step"] - recorded[0]["step"]
    grown = recorded[-1]["rss_mb"] - recorded[0]["rss_mb"]
    bare_grown = bare[-1]["rss_mb"] - bare[0]["rss_mb"]
    per_100k = (grown - bare_grown) * 100_000 / records
    print(
        f"growth from step {recorded[0]['step']:,} to {recorded[-1]['step']:,}: recorded "
        f"{grown:+.1f} MB, bare {bare_grown:+.1f} MB; beyond the bare twin {per_100k:+.2f} MB "
        f"per 100,000 records (goal: under {GOAL_MB_PER_100K:g} MB)"
    )
    print(
        f"run file: {size / 1e6:.1f} MB, {size / recorded[-1]['step']:.0f} bytes a record; "
        f"{recorded[-1]['seconds']:.0f} s recorded, {bare[-1]['seconds']:.0f} s bare; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    return 0 if per_100k < GOAL_MB_PER_100K else 1


if __name__ == "__main__":
    raise SystemExit(main())
