"""One command for the first machine with a GPU: the CUDA tests, the overhead and trainer
benchmarks on the GPU, and a short recorded pair, summed up in one table.

    bash scripts/gpu-check.sh                  # everything, about 40 minutes on one modern GPU
    bash scripts/gpu-check.sh --out table.txt  # where the table goes (default gpu-check.txt)

Each part runs in its own process with a time limit; a part that fails or runs over is a row
saying so, and the others still run. Without CUDA it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR_COPY = ROOT.parent / "shared" / "datasets" / "cifar10-jpg"  # the shared copy, if present
RECORD_STEPS = 200

# (name, seconds allowed): the parts; the compiled ones compile ResNet-56 once per variant and
# round (max-autotune tunes its kernels first)
PARTS = {
    "cuda tests": 240,
    "overhead resnet56": 240,
    "overhead resnet1202": 300,
    "overhead compiled": 900,
    "overhead compiled max-autotune": 1200,
    "overhead compiled reduce-overhead": 600,
    "trainer": 180,
    "record pair": 420,
}


# each overhead part's JSON file in the work folder
OVERHEAD_JSON = {
    "overhead resnet56": "overhead56.json",
    "overhead resnet1202": "overhead1202.json",
    "overhead compiled": "overhead_compiled.json",
    "overhead compiled max-autotune": "overhead_compiled_mat.json",
    "overhead compiled reduce-overhead": "overhead_compiled_ro.json",
}


def get_args_parser() -> argparse.ArgumentParser:
    """The check's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.txt", help="write the table here too")
    parser.add_argument(
        "--data",
        default=None,
        help=f"dataset of the recorded pair (default: {CIFAR_COPY} if present, else synthetic)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(PARTS), help="run only these parts (default: all)"
    )
    return parser


def commands(data: str, work: Path) -> dict[str, list[str]]:
    """The command line of each part; figures come back as JSON files in `work`."""
    python = sys.executable
    overhead = [python, str(ROOT / "benchmarks" / "overhead.py"), "--device", "cuda", "--amp"]
    compiled = [*overhead, "--compile", "--models", "resnet56", "--batch", "128", "--steps", "30"]
    return {
        "cuda tests": [python, "-m", "pytest", "-q", str(ROOT / "tests" / "test_cuda.py")],
        "overhead resnet56": [
            *overhead, "--skip-1202", "--steps", "30", "--count-ops",
            "--json", str(work / "overhead56.json"),
        ],
        "overhead resnet1202": [
            *overhead, "--skip-56", "--steps-1202", "10", "--json", str(work / "overhead1202.json"),
        ],
        # torch.compile: each variant in its own process; default mode with the eager rows
        "overhead compiled": [
            *compiled, "--rounds", "3", "--json", str(work / "overhead_compiled.json"),
        ],
        "overhead compiled max-autotune": [
            *compiled, "--rounds", "2", "--no-eager", "--compile-mode",
            "max-autotune-no-cudagraphs", "--json", str(work / "overhead_compiled_mat.json"),
        ],
        # CUDA graphs: the bare graph replays whole; a recorded step's graph is split at
        # gradscope's ops (Python, which a CUDA graph cannot replay) into partitions
        "overhead compiled reduce-overhead": [
            *compiled, "--rounds", "2", "--no-eager", "--compile-mode", "reduce-overhead",
            "--json", str(work / "overhead_compiled_ro.json"),
        ],
        "trainer": [
            python, str(ROOT / "benchmarks" / "trainer.py"), "--device", "cuda", "--rounds", "30",
            "--json", str(work / "trainer.json"),
        ],
        "record pair": [
            python, "-m", "gradscope", "record", "--model", "resnet56", "--baseline", "plain56",
            "--data", data, "--steps", str(RECORD_STEPS), "--every", "10", "--device", "cuda",
            "--out", str(work), "--name", "pair", "--quiet",
        ],
    }  # fmt: skip


def run_part(name: str, command: list[str], limit: float) -> dict:
    """Run one part: {"ok", "seconds", "output"} (output: its stdout, or why it failed)."""
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": limit, "output": f"ran over its {limit:.0f} s"}
    seconds = time.monotonic() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"ok": False, "seconds": seconds, "output": f"exit {done.returncode}: {tail[0]}"}
    return {"ok": True, "seconds": seconds, "output": done.stdout}


def record_rates(summary: str) -> dict[str, float]:
    """Train images/s per model from `gradscope record`'s closing table."""
    rates = {}
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) >= 2 and re.fullmatch(r"\d+/\d+", fields[1]) and fields[-1] != "-":
            rates[fields[0]] = float(fields[-1])
    return rates


def compiled_rows(part: str, variant: str, values: dict) -> list[tuple[str, str, str]]:
    """The rows a compiled variant adds: mean-step ratio, compile time, graphs and breaks."""
    counts = f"{values['graphs']}, {values['graph_breaks']}, {values['recompiles']}"
    return [
        (part, f"{variant}: mean-step ratio", f"{values['paired_mean']:.3f}"),
        (part, f"{variant}: compile s", f"{values['compile_s']:.1f}"),
        (part, f"{variant}: graphs, breaks, recompiles", counts),
    ]


def build_table(results: dict[str, dict], work: Path) -> str:
    """The check's table: one row per figure, from each part's result and JSON output."""
    rows = [("part", "figure", "value")]
    for name, result in results.items():
        if not result["ok"]:
            rows.append((name, "FAILED", result["output"]))
            continue
        rows.append((name, "seconds", f"{result['seconds']:.0f}"))
        if name == "cuda tests":
            last = result["output"].strip().splitlines()[-1:] or [""]
            rows.append((name, "pytest", last[0]))
        elif name.startswith("overhead"):
            figures = json.loads((work / OVERHEAD_JSON[name]).read_text())
            for run in figures["runs"]:
                rows.append((name, "bare step ms", f"{run['bare_ms']:.1f}"))
                for variant, values in run["variants"].items():
                    rows.append((name, f"{variant}: paired ratio", f"{values['paired']:.3f}"))
                    if "compile_s" in values:  # the compiled parts
                        rows += compiled_rows(name, variant, values)
                if "device_ops_per_layer" in run:
                    rows.append(
                        (name, "device ops per layer", f"{run['device_ops_per_layer']:.2f}")
                    )
        elif name == "trainer":
            figures = json.loads((work / "trainer.json").read_text())
            rows.append((name, "trainer images/s", f"{figures['trainer_images_per_s']:.0f}"))
            rows.append((name, "bare loop images/s", f"{figures['bare_images_per_s']:.0f}"))
            rows.append((name, "trainer / bare", f"{figures['ratio']:.3f}"))
        elif name == "record pair":
            for model, rate in record_rates(result["output"]).items():
                rows.append((name, f"{model} train images/s", f"{rate:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def main(args) -> int:
    """Run the parts in turn, print the table and write it to --out."""
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a "
              "machine with an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)  # fmt: skip
        return 2
    data = args.data or (str(CIFAR_COPY) if CIFAR_COPY.is_dir() else "synthetic")
    print(f"gpu-check on {torch.cuda.get_device_name()}, torch {torch.__version__}, data {data}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, command in commands(data, work).items():
            if args.only and name not in args.only:
                continue
            print(f"  {name} ...", flush=True)
            results[name] = run_part(name, command, PARTS[name])
        table = build_table(results, work)
    print(table)
    Path(args.out).write_text(table + "\n")
    print(f"table written to {args.out}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
