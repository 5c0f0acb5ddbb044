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


def write_run(path, stats, events=()):
    """Write `stats` (name -> [records, layers]) at STEPS and `events`; return the open run."""
    layers = [{"name": f"layer{j}", "type": "Conv2d", "params": 10} for j in range(LAYERS)]
    with RunWriter(path, layers=layers, stats=list(stats), overwrite=True) as w:
        for i, step in enumerate(STEPS):
            w.append(int(step), np.stack([v[i] for v in stats.values()]).astype(np.float32))
        for event in events:
            w.event(event)
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
    assert f"at step {STEPS[-1]} " in result.findings[0].message  # where the growth peaked


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
    stats["grad_nonfinite"][:, 7] = np.nan  # (as the recorder writes it for such a layer)
    result = diagnosed(tmp_path, stats)
    (nonfinite,) = [f for f in result.findings if f.kind == "nonfinite"]
    assert (nonfinite.layer, nonfinite.step) == ("layer4", 115)
    assert [f.layer for f in result.findings if f.kind == "no_gradient"] == ["layer7"]


def test_earliest_nonfinite_over_stats(tmp_path):
    stats = healthy_stats()
    stats["grad_norm"][30, 1] = np.inf
    stats["act_absmax"][12, 6] = np.inf  # earlier: this one is reported
    stats["grad_nonfinite"][12, 2] = 3  # same step, but the forward pass came first
    (finding,) = [f for f in diagnosed(tmp_path, stats).findings if f.kind == "nonfinite"]
    assert (finding.layer, finding.step) == ("layer6", 60)
    assert "gradients are non-finite too" in finding.message
    stats["act_absmax"][12, 6] = 3.0
    stats["grad_nonfinite"][12, 5] = 3  # gradients alone: the shallowest
    (finding,) = [f for f in diagnosed(tmp_path, stats).findings if f.kind == "nonfinite"]
    assert (finding.layer, finding.step) == ("layer2", 60)


def test_a_stored_origin_is_the_nonfinite_finding(tmp_path):
    # The flight recorder's replay placed it: it replaces the scan of the records.
    stats = healthy_stats()
    stats["grad_norm"][20:, :] = np.nan  # what the records show from step 100 on
    message = "step 98: first non-finite value in the forward pass of layer3 (Conv2d), ..."
    origin = {"step": 98, "kind": "nonfinite", "phase": "forward", "layer": "layer3"}
    origin |= {"op": "aten.convolution", "op_absmax": 6.5e4, "message": message}
    overflow = {"step": 40, "kind": "amp_overflow", "update": "skipped"}
    with write_run(tmp_path / "run.h5", stats, [overflow, origin]) as run:
        result = diagnose(run)
    (finding,) = [f for f in result.findings if f.kind == "nonfinite"]
    assert (finding.step, finding.layer, finding.phase, finding.op) == (
        98,
        "layer3",
        "forward",
        "aten.convolution",
    )
    assert finding.value == 6.5e4 and finding.message == message
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["findings"][0]["phase"] == "forward" and data["findings"][0]["op"] == (
        "aten.convolution"
    )
    assert result.to_text().splitlines()[1:3] == ["nonfinite (1):", f"  {message}"]


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


def with_signal(stats, signal):
    """`stats` plus act_grad_norm values [records, layers]."""
    return {**stats, "act_grad_norm": signal}


def flat_signal():
    """A healthy backpropagated signal: ~0.1 at every layer and step."""
    return np.random.default_rng(1).uniform(0.09, 0.11, (RECORDS, LAYERS))


def test_a_steady_signal_has_no_signal_finding(tmp_path):
    result = diagnosed(tmp_path, with_signal(healthy_stats(), flat_signal()))
    assert result.findings == []
    assert 0.8 < result.signal_ratio < 1.25
    assert "first/last-layer act_grad_norm ratio" in result.to_text()


@pytest.mark.parametrize(
    ("decades", "kind"), [(-3, "signal_vanishing_depth"), (3, "signal_exploding_depth")]
)
def test_signal_vanishing_or_exploding_through_depth(tmp_path, decades, kind):
    signal = flat_signal()
    signal[8:] *= np.logspace(decades, 0, LAYERS)[None, :]  # from record 8 (step 40) on
    result = diagnosed(tmp_path, with_signal(healthy_stats(), signal))
    assert kinds(result) == [kind]
    (finding,) = result.findings
    assert finding.layer == "layer0" and finding.step == 40
    assert finding.value == pytest.approx(10.0**decades, rel=0.3)
    assert "3.0 decades" in finding.message
    # 2.5 decades is under a 3-decade threshold
    signal = flat_signal() * np.logspace(decades * 2.5 / 3, 0, LAYERS)[None, :]
    milder = diagnosed(tmp_path, with_signal(healthy_stats(), signal), signal_depth_decades=3)
    assert milder.findings == []


def test_a_layers_signal_collapsing_over_steps(tmp_path):
    signal = flat_signal()
    signal[20:, 1:3] *= 1e-5  # layers 1 and 2 from step 100 on
    signal[20:, 5] *= 1e-3  # a 3-decade fall: under the default 4-decade threshold
    result = diagnosed(tmp_path, with_signal(healthy_stats(), signal))
    collapse = [f for f in result.findings if f.kind == "signal_collapse"]
    assert [(f.layer, f.step) for f in collapse] == [("layer1", 100), ("layer2", 100)]
    assert all(f.value == pytest.approx(1e-5, rel=0.3) for f in collapse)
    strict = diagnosed(tmp_path, with_signal(healthy_stats(), signal), signal_collapse_ratio=1e-2)
    assert [f.layer for f in strict.findings if f.kind == "signal_collapse"] == [
        "layer1",
        "layer2",
        "layer5",
    ]
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["thresholds"]["signal_collapse_ratio"] == 1e-4 and "signal_ratio" in data


def test_a_short_real_pair_flags_plain56_and_not_resnet56(tmp_path, one_thread):
    # The worked example in miniature: both nets recorded at every step on generated 8x8
    # images (about 12 s on one CPU thread). The effect is decades wide, not a tuned edge:
    # plain56's signal at conv1 ends ~6 decades below fc's, resnet56's within one decade.
    from gradscope.train import ExperimentConfig, TrainConfig, run_experiment

    train = TrainConfig(
        data="synthetic", image_size=8, steps=12, batch_size=16, eval_every=12, record_every=1,
        device="cpu",
    )  # fmt: skip
    config = ExperimentConfig(
        model="resnet56", baselines=["plain56"], out=str(tmp_path), name="pair", train=train
    )
    result = run_experiment(config, progress=False)
    paths = {r.model: r.run_path for r in result.results}
    with (
        gradscope.open_run(paths["resnet56"]) as resnet,
        gradscope.open_run(paths["plain56"]) as plain,
    ):
        healthy, sick = diagnose(resnet), diagnose(plain)
    assert healthy.findings == [], healthy.to_text()
    assert {"signal_vanishing_depth", "signal_collapse"} <= set(kinds(sick)), sick.to_text()
    assert sick.signal_ratio < 1e-3 < 0.1 < healthy.signal_ratio


def unit_stats(seed=0):
    """healthy_stats plus a healthy record of everything the gradient-path rules read."""
    stats = healthy_stats(seed)
    shape = (RECORDS, LAYERS)
    stats.update(
        grad_absmax=np.full(shape, 0.3),
        weight_frozen_frac=np.zeros(shape),
        act_pos_frac=np.ones(shape),
        act_grad_norm=flat_signal(),
        act_grad_zero_frac=np.zeros(shape),
    )
    return stats


def test_dead_units_are_never_positive_and_confirmed_dead(tmp_path):
    stats = unit_stats()
    stats["act_zero_frac"][:] = 0.0  # pre-activation outputs
    stats["act_pos_frac"][15:, 2] = 0.2  # 80% never > 0 from step 75 ...
    stats["act_grad_zero_frac"][15:, 2] = 0.8  # ... and no gradient through them: dead
    stats["act_pos_frac"][:, 4] = 0.0  # never > 0 but a gradient passes (logits): alive
    stats["act_pos_frac"][:, 5] = 0.3  # a post-ReLU output: 70% of its units all zero
    stats["act_zero_frac"][:, 5] = 0.85
    stats["act_pos_frac"][:, 6] = 0.9  # zero gradient from further on, units fire: alive
    stats["act_grad_zero_frac"][:, 6] = 1.0
    result = diagnosed(tmp_path, stats)
    dead = [(f.layer, f.step, round(f.value, 2)) for f in result.findings if f.kind == "dead"]
    assert dead == [("layer2", 75, 0.8), ("layer5", 0, 0.7)]
    assert "80% of its units are dead since step 75" in result.to_text()
    assert [f.layer for f in diagnosed(tmp_path, stats, dead_unit_frac=0.75).findings] == ["layer2"]


def test_a_dead_layer_blocks_the_gradient_of_every_layer_before_it(tmp_path):
    stats = unit_stats()
    stats["grad_norm"][:, :4] = 0.0  # layers 0-3: exactly zero gradient
    stats["grad_absmax"][:, :4] = 0.0
    stats["act_grad_norm"][:, :4] = 0.0
    stats["act_grad_zero_frac"][:, :4] = 1.0
    stats["act_pos_frac"][:, 3] = 0.0  # layer 3's units never fire
    stats["act_zero_frac"][:, 3] = 0.0
    result = diagnosed(tmp_path, stats)
    assert kinds(result) == ["dead", "gradient_blocked"]
    (blocked,) = [f for f in result.findings if f.kind == "gradient_blocked"]
    assert (blocked.layer, blocked.step, blocked.value) == ("layer3", 0, 4.0)
    assert "layer0 .. layer3 (4 layers)" in blocked.message and "units are dead" in blocked.message
    stats["act_pos_frac"][:, 3] = 1.0  # the zeros come from a dead layer after it
    stats["act_pos_frac"][:, 4] = 0.0
    stats["act_grad_zero_frac"][:, 4] = 1.0
    (blocked,) = [f for f in diagnosed(tmp_path, stats).findings if f.kind == "gradient_blocked"]
    assert "comes back from layer4, 100% of whose units are dead" in blocked.message


def test_nothing_reaching_the_layers_is_a_detach_or_an_unused_branch(tmp_path):
    stats = unit_stats()
    for stat in ("grad_norm", "grad_absmax", "grad_nonfinite", "act_grad_norm"):
        stats[stat][10:, :3] = np.nan  # layers 0-2 cut off from step 50
        stats[stat][:, 5:7] = np.nan  # layers 5-6 never reached
    stats["act_grad_zero_frac"][10:, :3] = np.nan
    stats["act_grad_zero_frac"][:, 5:7] = np.nan
    result = diagnosed(tmp_path, stats)
    blocked = [f for f in result.findings if f.kind == "gradient_blocked"]
    assert [(f.layer, f.step) for f in blocked] == [("layer2", 50), ("layer6", 0)]
    assert ".detach() or torch.no_grad() after it" in blocked[0].message
    assert "an unused branch" in blocked[1].message
    assert "no_gradient" not in kinds(result)


def test_no_gradient_is_for_frozen_and_never_called_layers(tmp_path):
    stats = unit_stats()
    for stat in ("grad_norm", "grad_absmax", "grad_nonfinite"):
        stats[stat][:, [1, 7]] = np.nan
    stats["weight_frozen_frac"][:, 1] = 1.0  # frozen, its output still gets a gradient
    for stat in ("act_zero_frac", "act_pos_frac", "act_absmax", "act_grad_norm"):
        stats[stat][:, 7] = np.nan  # never called
    stats["act_grad_zero_frac"][:, 7] = np.nan
    result = diagnosed(tmp_path, stats)
    found = {f.layer: f.message for f in result.findings}
    assert kinds(result) == ["no_gradient"] and sorted(found) == ["layer1", "layer7"]
    assert "frozen: its parameters have requires_grad=False" in found["layer1"]
    assert "never called in a forward pass with gradients enabled" in found["layer7"]


def test_non_finite_gradients_are_not_no_gradient(tmp_path):
    # One step with a NaN weight in layer 3: its norm is NaN, its output and every gradient too.
    stats = unit_stats()
    stats["weight_norm"] = np.ones((RECORDS, LAYERS))
    stats["weight_norm"][:, 3] = np.nan
    stats["act_absmax"][:, 3:] = np.nan
    stats["grad_norm"][:] = np.nan
    stats["grad_absmax"][:] = np.nan
    stats["grad_nonfinite"][:] = 2.0
    stats["act_grad_norm"][:] = np.nan
    result = diagnosed(tmp_path, stats)
    assert kinds(result) == ["nonfinite"]
    (finding,) = result.findings
    assert (finding.layer, finding.step) == ("layer3", 0) and "weight_norm = nan" in finding.message


def test_a_signal_exploding_at_initialization_is_flagged_even_once_it_has_settled(tmp_path):
    signal = flat_signal()
    signal[0] *= np.logspace(3, 0, LAYERS)  # step 0: the first layer gets 1e3 x the last's
    result = diagnosed(tmp_path, with_signal(healthy_stats(), signal))
    (finding,) = result.findings
    assert (finding.kind, finding.layer, finding.step) == ("signal_exploding_depth", "layer0", 0)
    assert finding.value == pytest.approx(1e3, rel=0.3) and "at initialization" in finding.message
    assert 0.8 < result.signal_ratio < 1.25  # the recent state is healthy
    assert not diagnosed(
        tmp_path, with_signal(healthy_stats(), signal), signal_depth_decades=3.5
    ).findings
