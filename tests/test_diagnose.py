"""Tests of gradscope.diagnose on synthetic run files built to show each problem."""

import json

import numpy as np
import pytest

import gradscope
from gradscope.diagnosis import Thresholds, diagnose
from gradscope.errors import UsageError
from gradscope.store import RunWriter

RECORDS, LAYERS = 40, 8
STEPS = np.arange(RECORDS) * 5  # record i is at step 5 * i


def healthy_stats(seed=0):
    """grad_norm ~ 1 (+-10 %), half the activations zero, no non-finite gradients."""
    rng = np.random.default_rng(seed)
    return {
        "grad_norm": rng.uniform(0.9, 1.1, (RECORDS, LAYERS)),
        "grad_nonfinite": np.zeros((RECORDS, LAYERS)),
        "act_zero_frac": np.full((RECORDS, LAYERS), 0.5),
        "act_absmax": np.full((RECORDS, LAYERS), 3.0),
    }


def write_run(path, stats):
    """Write `stats` (name -> [records, layers]) at STEPS and return the opened run."""
    layers = [{"name": f"layer{j}", "type": "Conv2d", "params": 10} for j in range(LAYERS)]
    with RunWriter(path, layers=layers, stats=list(stats), overwrite=True) as w:
        for i, step in enumerate(STEPS):
            w.append(int(step), np.stack([v[i] for v in stats.values()]).astype(np.float32))
    return gradscope.open_run(path)


def diagnosed(tmp_path, stats, **thresholds):
    with write_run(tmp_path / "run.h5", stats) as run:
        return diagnose(run, **thresholds)


def kinds(result):
    return sorted({f.kind for f in result.findings})


def test_healthy_run_has_no_findings(tmp_path):
    result = diagnosed(tmp_path, healthy_stats())
    assert result.findings == []
    assert 0.8 < result.first_last_ratio < 1.25
    assert "no problems found" in result.to_text()


def test_vanishing_gradients_in_the_first_layers(tmp_path):
    stats = healthy_stats()
    stats["grad_norm"][10:, :3] *= 1e-5  # from record 10 (step 50) on
    result = diagnosed(tmp_path, stats)
    vanishing = [f for f in result.findings if f.kind == "vanishing"]
    assert [f.layer for f in vanishing] == ["layer0", "layer1", "layer2"]
    assert all(f.step == 50 and f.value < 1e-4 for f in vanishing)
    assert result.first_last_ratio < 1e-4
    assert kinds(diagnosed(tmp_path, stats, vanishing_ratio=1e-6)) == []  # threshold settable


def test_exploding_across_depth(tmp_path):
    stats = healthy_stats()
    stats["grad_norm"] *= np.logspace(4, 0, LAYERS)[None, :]  # first layer 1e4 x the last
    result = diagnosed(tmp_path, stats)
    assert kinds(result) == ["exploding_depth"]
    (finding,) = result.findings
    assert finding.layer == "layer0" and finding.step == 0
    assert finding.value == pytest.approx(1e4, rel=0.3)


def test_exploding_over_steps(tmp_path):
    stats = healthy_stats()
    stats["grad_norm"] *= np.logspace(0, 6, RECORDS)[:, None]  # 1e6 x growth over the run
    result = diagnosed(tmp_path, stats)
    assert kinds(result) == ["exploding_steps"]
    assert len(result.findings) == LAYERS
    first_over = int(np.argmax(np.logspace(0, 6, RECORDS) > 2e3))  # baseline ~ first 4 records
    assert abs(result.findings[0].step - STEPS[first_over]) <= 10


def test_dead_layer(tmp_path):
    stats = healthy_stats()
    stats["act_zero_frac"][15:, 5] = 1.0
    result = diagnosed(tmp_path, stats)
    assert kinds(result) == ["dead"]
    (finding,) = result.findings
    assert (finding.layer, finding.step, finding.value) == ("layer5", 75, 1.0)
    assert diagnosed(tmp_path, stats, dead_zero_frac=1.0).findings  # ">=": 1.0 still dead


@pytest.mark.parametrize("chunk", [4096, 7])
def test_first_nan_step_and_layer(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr("gradscope.diagnosis.SCAN_CHUNK_RECORDS", chunk)
    stats = healthy_stats()
    stats["grad_norm"][23:, 4] = np.nan  # appears at record 23 = step 115 in layer 4
    stats["grad_norm"][:, 7] = np.nan  # layer 7 never had a gradient: not an error
    result = diagnosed(tmp_path, stats)
    (nonfinite,) = [f for f in result.findings if f.kind == "nonfinite"]
    assert (nonfinite.layer, nonfinite.step) == ("layer4", 115)
    assert [f.layer for f in result.findings if f.kind == "no_gradient"] == ["layer7"]


def test_earliest_nonfinite_over_stats(tmp_path):
    stats = healthy_stats()
    stats["grad_norm"][30, 1] = np.inf
    stats["act_absmax"][12, 6] = np.inf  # earlier: this one is reported
    stats["grad_nonfinite"][12, 2] = 3  # same step, shallower layer: wins
    (finding,) = [f for f in diagnosed(tmp_path, stats).findings if f.kind == "nonfinite"]
    assert (finding.layer, finding.step) == ("layer2", 60)


def test_to_dict_is_strict_json_and_to_text_groups(tmp_path):
    stats = healthy_stats()
    stats["grad_norm"][5:, 2] = np.inf
    stats["act_zero_frac"][:, :] = 1.0
    result = diagnosed(tmp_path, stats)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    nonfinite = [f for f in data["findings"] if f["kind"] == "nonfinite"][0]
    assert nonfinite["value"] == "inf" and nonfinite["step"] == 25
    assert data["thresholds"]["dead_zero_frac"] == 0.99
    text = result.to_text()
    assert "nonfinite (1):" in text and f"dead ({LAYERS}):" in text and "... and 3 more" in text


def test_thresholds_are_checked(tmp_path):
    with write_run(tmp_path / "run.h5", healthy_stats()) as run:
        with pytest.raises(UsageError, match="unknown threshold"):
            diagnose(run, vanishing=1e-3)
        with pytest.raises(UsageError, match="dead_zero_frac"):
            diagnose(run, dead_zero_frac=1.5)
        custom = diagnose(run, Thresholds(recent_fraction=0.5), vanishing_ratio=0.5)
    assert custom.thresholds.recent_fraction == 0.5 and custom.thresholds.vanishing_ratio == 0.5


def test_missing_stats_are_reported_as_skipped(tmp_path):
    stats = {"grad_norm": healthy_stats()["grad_norm"]}
    result = diagnosed(tmp_path, stats)
    assert result.findings == []
    assert any("act_zero_frac" in reason for reason in result.skipped)
