"""The benchmark scripts still run end to end (tiny sizes: a smoke test, not a measurement)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("heap", ["default heap", "steady heap"])
def test_overhead_benchmark_runs_and_reports_every_variant(tmp_path, heap):
    command = [sys.executable, str(ROOT / "benchmarks" / "overhead.py")]
    command += ["--steps", "2", "--warmup", "1", "--batch", "4", "--skip-1202"]
    if heap == "steady heap":
        command.append("--steady-heap")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert heap in out.splitlines()[0]
    assert "paired" in out and "A/A control" in out and "faults" in out
    for variant in ("all stats, every=1", "all stats, every=10", "parameter stats, every=1"):
        rows = re.findall(rf"^{re.escape(variant)}\s", out, flags=re.MULTILINE)
        assert len(rows) == 2  # a timing row and an on-disk row
