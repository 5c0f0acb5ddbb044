"""Benchmark: time to build the dashboard's figures from a run file (open_run -> built Figure),
and (`--clients N`) the dashboard served by gunicorn under N clients polling live runs.

Writes two synthetic run files with RunWriter in a temporary folder (64,000 records x 115 layers
and 5,000 records x 1,200 layers), then reports the median wall time of `depth_step_heatmap`
(and of `flow_curve`) over several repeats, timed from `open_run` to the built Figure.
Target: heatmap <= 300 ms each. Run: `python benchmarks/dashboard.py [--repeats N]`.

    python benchmarks/dashboard.py --clients 20 [--seconds 60] [--interval 2] [--workers 2]

runs `gunicorn gradscope.app.server:server` (gunicorn is a development dependency) on
127.0.0.1 over two live runs being written, with N clients doing what the page does every
interval, and prints the latency of each kind of request (p50, p95, max) and the failures.
Target: no failed request, p95 under 1 s (benchmarks/dashboard_load.py says how).
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import gradscope
from gradscope import figures
from gradscope.store import RunWriter

CASES = ((64_000, 115), (5_000, 1_200))  # (records, layers) of the benchmarked run files
STATS = ("grad_norm", "act_zero_frac")
TARGET_MS = 300.0  # budget for one heatmap figure


def write_run(path: Path, records: int, n_layers: int, seed: int = 0) -> None:
    """Write a synthetic run: log-normal gradient norms decaying with depth, a few NaN layers."""
    rng = np.random.default_rng(seed)
    layers = [
        {"name": f"block{i // 3}.conv{i % 3}", "type": "Conv2d", "params": 9 * 64 * 64}
        for i in range(n_layers)
    ]
    depth_scale = np.logspace(0, -3, n_layers, dtype=np.float32)
    with RunWriter(path, layers=layers, stats=list(STATS), attrs={"synthetic": True}) as writer:
        for step in range(records):
            values = np.empty((len(STATS), n_layers), np.float32)
            values[0] = depth_scale * rng.lognormal(0.0, 0.3, n_layers).astype(np.float32)
            values[0, -1] = np.nan  # a layer without gradient
            values[1] = rng.uniform(0.3, 0.6, n_layers)
            writer.append(step, values)
            if step % 50 == 0:
                writer.log(step, {"loss": 2.0 / (1 + step / 1000)})


def time_ms(build, repeats: int) -> tuple[float, float]:
    """Median wall and median process-CPU times in ms of `repeats` calls of `build()`.

    CPU time is reported too because the machine may be shared: it is what the wall time
    would be without other processes competing for the cores (the work is single-threaded).
    """
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        build()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def heatmap_from_file(path: Path):
    """open_run -> depth_step_heatmap, as the dashboard does on a refresh."""
    with gradscope.open_run(path) as run:
        return figures.depth_step_heatmap([run], "grad_norm")


def flow_from_file(path: Path):
    """open_run -> flow_curve at the latest record."""
    with gradscope.open_run(path) as run:
        return figures.flow_curve([run], "grad_norm")


def main(argv=None) -> int:
    """Write the run files, time the figures, print one line per case; exit 1 over budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case")
    parser.add_argument(
        "--clients", type=int, default=None, help="load mode: this many polling clients"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="load mode: duration")
    parser.add_argument("--interval", type=float, default=2.0, help="load mode: poll interval")
    parser.add_argument("--workers", type=int, default=2, help="load mode: gunicorn workers")
    args = parser.parse_args(argv)
    if args.clients is not None:
        if args.clients < 1 or args.seconds <= 0 or args.interval <= 0 or args.workers < 1:
            parser.error("--clients, --seconds, --interval and --workers must be positive")
        from dashboard_load import run_load  # benchmarks/ is this script's folder

        return run_load(args.clients, args.seconds, args.interval, args.workers)
    over_budget = False
    with tempfile.TemporaryDirectory() as folder:
        for records, n_layers in CASES:
            path = Path(folder) / f"run_{records}x{n_layers}.h5"
            start = time.perf_counter()
            write_run(path, records, n_layers)
            written = time.perf_counter() - start
            heatmap_from_file(path)  # warm-up: imports, first-use caches
            heat, heat_cpu = time_ms(lambda p=path: heatmap_from_file(p), args.repeats)
            flow, flow_cpu = time_ms(lambda p=path: flow_from_file(p), args.repeats)
            over_budget |= heat > TARGET_MS
            print(
                f"{records:>6} records x {n_layers:>5} layers: "
                f"heatmap {heat:6.1f} ms wall ({heat_cpu:6.1f} ms CPU), "
                f"flow {flow:5.1f} ms wall ({flow_cpu:5.1f} ms CPU); median of {args.repeats}, "
                f"file {path.stat().st_size / 1e6:.0f} MB written in {written:.1f} s"
            )
    print(f"target: heatmap <= {TARGET_MS:.0f} ms wall; load average {os.getloadavg()[0]:.1f}")
    return 1 if over_budget else 0


if __name__ == "__main__":
    raise SystemExit(main())
