"""The benchmark scripts still run end to end (tiny sizes: a smoke test, not a measurement)."""

import json
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
        command += ["--steady-heap", "--floors"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert heap in out.splitlines()[0]
    assert "paired" in out and "A/A control" in out and "faults" in out
    variants = ("all stats, every=1", "all stats, every=10", "parameter stats, every=1")
    variants += ("all stats, every=1, nonfinite=off", "all stats, every=10, nonfinite=off")
    for variant in variants:
        rows = re.findall(rf"^{re.escape(variant)}\s", out, flags=re.MULTILINE)
        assert len(rows) == 2  # a timing row and an on-disk row
    if heap == "steady heap":  # the floors: a timing row each (they write no file)
        for floor in ("floor: hooks alone", "floor: reads alone"):
            assert len(re.findall(rf"^{re.escape(floor)}\s", out, flags=re.MULTILINE)) == 1


def load_benchmark(name: str):
    """A benchmark script as a module (registered: its dataclasses need it)."""
    import importlib.util

    module_name = f"benchmark_{name}"
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_gpu_check():
    return load_benchmark("gpu_check")


def test_compiled_overhead_pairs_each_round_with_its_compiled_bare_run():
    compiled = load_benchmark("overhead_compiled")
    overhead = load_benchmark("overhead")

    def measured(median, mean, compile_s, graphs=1):
        return dict(median_s=median, mean_s=mean, compile_s=compile_s, graphs=graphs,
                    recompiles=0, graph_breaks=0)  # fmt: skip

    rounds = [  # the machine is twice as slow in the second round: ratios must not move
        {"compiled bare": measured(0.10, 0.10, 40.0), "compiled, every=10": measured(
            0.101, 0.102, 70.0, graphs=2)},
        {"compiled bare": measured(0.20, 0.20, 1.0), "compiled, every=10": measured(
            0.202, 0.204, 2.0, graphs=2)},
    ]  # fmt: skip
    figures = compiled.summary(rounds, overhead.median_interval)
    every10 = figures["variants"]["compiled, every=10"]
    assert every10["paired"] == pytest.approx(1.01) and every10["paired_mean"] == pytest.approx(
        1.02
    )
    assert every10["compile_s"] == 70.0 and every10["compile_ratio"] == pytest.approx(1.75)
    assert every10["compile_warm_s"] == 2.0 and every10["graphs"] == 2
    assert figures["bare_ms"] == pytest.approx(150.0)


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the message for machines without CUDA"
)
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2(tmp_path):
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--out", str(tmp_path / "t.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no CUDA device here" in done.stderr
    assert not (tmp_path / "t.txt").exists()


def test_gpu_check_arguments_and_commands(tmp_path):
    gpu_check = load_gpu_check()
    args = gpu_check.get_args_parser().parse_args(["--only", "trainer", "--out", "x.txt"])
    assert args.only == ["trainer"] and args.out == "x.txt"
    with pytest.raises(SystemExit):
        gpu_check.get_args_parser().parse_args(["--only", "no-such-part"])
    commands = gpu_check.commands("synthetic", tmp_path)
    assert set(commands) == set(gpu_check.PARTS)
    assert "--amp" in commands["overhead resnet56"] and "cuda" in commands["record pair"]
    assert sum(gpu_check.PARTS.values()) / 60 < 75  # each part bounded
    for part in ("overhead compiled", "overhead compiled max-autotune"):
        assert "--compile" in commands[part] and "resnet56" in commands[part]
    assert "reduce-overhead" in commands["overhead compiled reduce-overhead"]


def test_gpu_check_table_from_the_parts_results(tmp_path):
    gpu_check = load_gpu_check()
    run56 = {
        "title": "ResNet-56",
        "bare_ms": 21.5,
        "variants": {"all stats, every=1": {"median_ms": 22.0, "paired": 1.034}},
        "device_ops_per_layer": 2.91,
    }
    (tmp_path / "overhead56.json").write_text(json.dumps({"runs": [run56]}))
    (tmp_path / "trainer.json").write_text(
        json.dumps({"trainer_images_per_s": 9000.0, "bare_images_per_s": 9500.0, "ratio": 0.947})
    )
    summary = (
        "model                  steps train loss train err test err      test images train img/s\n"
        "resnet56             200/200     1.2000    40.00%   45.00%       all 10,000      8123.4\n"
        "plain56              200/200     1.5000    55.00%   58.00%       all 10,000      8400.0\n"
    )
    compiled = {"title": "resnet56 compiled", "bare_ms": 12.0, "variants": {
        "compiled, every=1": {"median_ms": 12.5, "paired": 1.04, "paired_mean": 1.041,
                              "compile_s": 61.0, "graphs": 1, "graph_breaks": 0, "recompiles": 0},
    }}  # fmt: skip
    (tmp_path / "overhead_compiled.json").write_text(json.dumps({"runs": [compiled]}))
    results = {
        "cuda tests": {"ok": True, "seconds": 30.0, "output": "...\n3 passed in 20.1s\n"},
        "overhead compiled": {"ok": True, "seconds": 600.0, "output": ""},
        "overhead resnet56": {"ok": True, "seconds": 60.0, "output": ""},
        "overhead resnet1202": {"ok": False, "seconds": 300.0, "output": "ran over its 300 s"},
        "trainer": {"ok": True, "seconds": 40.0, "output": ""},
        "record pair": {"ok": True, "seconds": 100.0, "output": summary},
    }
    table = gpu_check.build_table(results, tmp_path)
    lines = table.splitlines()
    assert lines[0].split() == ["part", "figure", "value"]
    assert any("3 passed in 20.1s" in line for line in lines)
    assert any("all stats, every=1: paired ratio" in line and "1.034" in line for line in lines)
    assert any("device ops per layer" in line and "2.91" in line for line in lines)
    assert any("overhead resnet1202" in line and "FAILED" in line for line in lines)
    assert any("trainer / bare" in line and "0.947" in line for line in lines)
    assert any("every=1: compile s" in line and "61.0" in line for line in lines)
    assert any("graphs, breaks, recompiles" in line and "1, 0, 0" in line for line in lines)
    assert any("resnet56 train images/s" in line and "8123" in line for line in lines)
    assert any("plain56 train images/s" in line and "8400" in line for line in lines)


def test_overhead_device_path_reports_ratios_and_device_ops(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--device-path"]
    command += ["--steps", "2", "--warmup", "1", "--floors", "--json", str(tmp_path / "o.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "device path on CPU (1 thread)" in result.stdout
    figures = json.loads((tmp_path / "o.json").read_text())["runs"][0]
    assert set(figures["variants"]) >= {
        "all stats, every=1",
        "all stats, every=10",
        "all stats, every=1, nonfinite=off",
        "all stats, every=10, nonfinite=off",
        "floor: hooks alone",
        "floor: reads alone",
    }
    assert 0 < figures["device_ops_per_layer"] < 20
    assert 0 < figures["watch_ops_per_step"] <= 4  # the goal: a few ops a step, none per layer


def test_probe_benchmark_times_the_pair_and_the_sweep_against_bare_twins(one_thread, capsys):
    bench = load_benchmark("probe")
    args = ["--models", "resnet20,plain20", "--batch-size", "4", "--widths", "2,4"]
    results = bench.main([*args, "--steps", "1", "--rounds", "1", "--skip-cli"])
    out = capsys.readouterr().out
    assert "pair resnet20 + plain20 at batch 4" in out and "sweep resnet20 widths 2,4" in out
    assert results["pair"]["paired_ratio"] > 0 and results["sweep"]["ratio"] > 0
    assert results["sweep"]["steps"] == 1


def test_instruments_benchmark_times_the_new_statistics_against_the_recorder_without(
    one_thread, capsys, monkeypatch
):
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports overhead.py
    path = ROOT / "benchmarks" / "instruments.py"
    spec = importlib.util.spec_from_file_location("instruments", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--skip-resnet", "--steps", "1", "--warmup", "0", "--sequences", "4"]
    results = bench.main([*args, "--tokens", "8", "--gpt2-width", "16"])
    out = capsys.readouterr().out
    assert "GPT-2 (" in out and "2 micro-batches" in out
    assert "instruments / without, every=10" in out and "noise scale recorded:" in out
    ratios = results["gpt2"]["instruments"]
    assert set(ratios) == {"every=10", "every=1"} and ratios["every=1"]["paired"] > 0


def test_the_diagnosis_benchmark_finds_every_known_failure_and_no_false_alarm():
    # Every case of benchmarks/diagnosis.py, in process (a few seconds each on one thread):
    # the broken setups give their expected findings, the healthy controls none.
    bench = load_benchmark("diagnosis")
    rows = bench.run_cases()
    assert [row.case for row in rows] == [case.name for case in bench.CASES]
    wrong = {row.case: row.text for row in rows if row.verdict == "wrong"}
    assert not wrong, wrong
    assert bench.table(rows).endswith(f"{len(rows)} of {len(rows)} cases right")
