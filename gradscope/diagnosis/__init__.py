"""Diagnosis of a run: vanishing/exploding gradients and signal, dead units, first non-finite,
growing activation outliers, a batch far above the gradient noise scale.

A probe file (`gradscope.probe`) is diagnosed at initialization instead: gradscope/_probe/
_diagnosis.py applies the rules that make sense on one record, and the probe's own.
"""

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from gradscope._json import json_number
from gradscope.diagnosis._findings import Finding, first_step, nanmedian, recent_rows
from gradscope.diagnosis._gradient_paths import gradient_path_findings, read_layer_rows
from gradscope.diagnosis._large_models import batch_above_noise_scale, kurtosis_growing
from gradscope.errors import UsageError
from gradscope.statistics import read_by
from gradscope.store import is_probe
from gradscope.store._names import path_label

SCAN_CHUNK_RECORDS = 4096  # records read at a time by the exact non-finite scan
# Statistics scanned record by record for the first non-finite value (those present in the run);
# grad_nonfinite first: at the same step and layer its count says more than a NaN norm.
NONFINITE_STATS = tuple(sorted(read_by("nonfinite"), key=lambda s: s != "grad_nonfinite"))
KIND_ORDER = (
    "nonfinite",
    "gradient_blocked",
    "signal_vanishing_depth",
    "signal_exploding_depth",
    "activations_vanishing_depth",  # probe files: the forward signal through depth
    "activations_exploding_depth",
    "residual_dominates",  # probe files: residual branches larger than the skip
    "signal_collapse",
    "exploding_depth",
    "exploding_steps",
    "vanishing",
    "dead",
    "dead_at_init",  # probe files: units that never fire on the probe batch
    "width_growing",  # probe files with widths: layers not width-stable
    "width_shrinking",
    "kurtosis_growing",  # activation outliers growing
    "batch_above_noise_scale",  # a note about the whole net: the batch far above B_noise
    "no_gradient",
)
TEXT_PER_KIND = 5  # findings of one kind listed by to_text before "... and N more"


@dataclass
class Thresholds:
    """Settable thresholds of the diagnosis rules (see docs/diagnosis.md)."""

    vanishing_ratio: float = 1e-3  # grad_norm below this x the median layer's: vanishing
    exploding_depth_ratio: float = 1e3  # first/last-layer grad_norm above this: exploding (depth)
    exploding_step_ratio: float = 1e3  # grad_norm above this x its early baseline: exploding
    dead_unit_frac: float = 0.5  # share of a layer's units dead at or above this: dead
    dead_zero_frac: float = 0.99  # runs without act_pos_frac: act_zero_frac at or above this
    signal_depth_decades: float = 2.0  # |log10| of first/last-layer act_grad_norm above this
    signal_collapse_ratio: float = 1e-4  # a layer's act_grad_norm below this x its baseline
    recent_fraction: float = 0.25  # share of the latest records a state is judged over (median)
    baseline_fraction: float = 0.1  # share of the earliest records setting a layer's baseline
    max_records: int = 4000  # records read (block-averaged) by the profile rules
    kurtosis_floor: float = 100.0  # recent median act_kurtosis above this (a Gaussian: 3) ...
    kurtosis_growth_ratio: float = 5.0  # ... and above this x its early median: kurtosis_growing
    batch_noise_ratio: float = 10.0  # batch in use above this x the model's noise scale: a note
    # probe files (gradscope.probe) only:
    residual_dominance_ratio: float = 1.0  # median over blocks of res_var / skip_var above this
    init_dead_unit_frac: float = 0.1  # share of a layer's units zero for every probe input
    width_exponent: float = 0.25  # |d log(act_abs_mean) / d log(width)| above this

    def check(self) -> None:
        """Raise UsageError on a threshold outside its valid range."""
        positive = (
            "vanishing_ratio",
            "exploding_depth_ratio",
            "exploding_step_ratio",
            "signal_depth_decades",
            "signal_collapse_ratio",
            "residual_dominance_ratio",
            "width_exponent",
            "kurtosis_floor",
            "kurtosis_growth_ratio",
            "batch_noise_ratio",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise UsageError(f"threshold {name} must be > 0, not {getattr(self, name)!r}")
        fractions = ("dead_unit_frac", "dead_zero_frac", "init_dead_unit_frac")
        for name in (*fractions, "recent_fraction", "baseline_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise UsageError(f"threshold {name} must be in (0, 1], not {getattr(self, name)!r}")
        if int(self.max_records) < 2:
            raise UsageError(f"threshold max_records must be >= 2, not {self.max_records!r}")


@dataclass
class Diagnosis:
    """Result of `diagnose`: findings plus the run's first-to-last-layer gradient ratio."""

    path: str
    records: int
    layers: int
    first_step: int | None
    last_step: int | None
    thresholds: Thresholds
    first_last_ratio: float | None  # grad_norm of first / last layer, median of recent records
    signal_ratio: float | None = None  # act_grad_norm of first / last layer, same median
    findings: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # rules that could not run, and why
    probe: dict | None = None  # a probe file's description: the diagnosis is at initialization

    def to_dict(self) -> dict:
        """JSON-able dict of the whole diagnosis (strict JSON: no NaN or inf numbers)."""
        return {
            "path": self.path,
            "records": self.records,
            "layers": self.layers,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "thresholds": asdict(self.thresholds),
            "first_last_ratio": json_number(self.first_last_ratio),
            "signal_ratio": json_number(self.signal_ratio),
            "findings": [finding.to_dict() for finding in self.findings],
            "skipped": list(self.skipped),
            "probe": self.probe,
        }

    def to_text(self) -> str:
        """Human-readable report, findings grouped by kind, as printed by `gradscope inspect`."""
        if self.probe is None:
            lines = [
                f"diagnosis of {path_label(self.path)}: {self.records} records "
                f"(steps {self.first_step}..{self.last_step}), {self.layers} layers"
            ]
            when = f"median over the latest {self.thresholds.recent_fraction:.0%} of records"
        else:
            from gradscope._probe._diagnosis import probe_heading

            lines = [probe_heading(self)]
            when = "at initialization"
        if self.first_last_ratio is not None:
            lines.append(f"first/last-layer grad_norm ratio: {self.first_last_ratio:.3g} ({when})")
        if self.signal_ratio is not None:
            lines.append(
                f"first/last-layer act_grad_norm ratio: {self.signal_ratio:.3g} "
                f"({_decades(self.signal_ratio)}; {when})"
            )
        if not self.findings:
            lines.append("no problems found")
        for kind in KIND_ORDER:
            found = [f for f in self.findings if f.kind == kind]
            if not found:
                continue
            lines.append(f"{kind} ({len(found)}):")
            lines.extend(f"  {f.message}" for f in found[:TEXT_PER_KIND])
            if len(found) > TEXT_PER_KIND:
                lines.append(f"  ... and {len(found) - TEXT_PER_KIND} more")
        lines.extend(f"skipped: {reason}" for reason in self.skipped)
        return "\n".join(lines)


def diagnose(run, thresholds: Thresholds | None = None, **overrides) -> Diagnosis:
    """Diagnose an opened run; keyword overrides set single thresholds (see `Thresholds`).

    Example: ``diagnose(run, vanishing_ratio=1e-4)``. Rules and defaults: docs/diagnosis.md.
    """
    thresholds = _thresholds(thresholds, overrides)
    if is_probe(run):
        from gradscope._probe._diagnosis import diagnose_probe

        return diagnose_probe(run, thresholds)
    steps = np.asarray(run.steps, dtype=np.int64)
    names = run.layers["name"].astype(str).to_numpy()
    result = Diagnosis(
        path=str(run.path),
        records=len(steps),
        layers=len(names),
        first_step=int(steps[0]) if len(steps) else None,
        last_step=int(steps[-1]) if len(steps) else None,
        thresholds=thresholds,
        first_last_ratio=None,
    )
    if not len(steps):
        result.skipped.append("every rule: the run has no records yet")
        return result
    stats = set(run.stats)
    result.findings.extend(_replayed_nonfinite(run) or _first_nonfinite(run, names, stats))
    if "grad_norm" in stats:
        rec_steps, grad = run.read("grad_norm", max_records=int(thresholds.max_records))
        grad = _positive(grad)
        rec_steps = np.asarray(rec_steps)
        result.first_last_ratio = _first_last_ratio(grad, thresholds)
        result.findings.extend(_exploding_depth(grad, rec_steps, names, thresholds))
        result.findings.extend(_exploding_steps(grad, rec_steps, names, thresholds))
        result.findings.extend(_vanishing(grad, rec_steps, names, thresholds))
    else:
        result.skipped.append("vanishing/exploding rules: the run does not record grad_norm")
    if "act_grad_norm" in stats:
        rec_steps, signal = run.read("act_grad_norm", max_records=int(thresholds.max_records))
        signal, rec_steps = _positive(signal), np.asarray(rec_steps)
        result.signal_ratio = _first_last_ratio(signal, thresholds)
        through_depth = _signal_through_depth(signal, rec_steps, names, thresholds)
        result.findings.extend(through_depth)
        if not any(f.kind == "signal_exploding_depth" for f in through_depth):
            result.findings.extend(_signal_exploding_at_init(run, names, thresholds))
        result.findings.extend(_signal_collapse(signal, rec_steps, names, thresholds))
    else:
        result.skipped.append("signal rules: the run does not record act_grad_norm")
    rows = read_layer_rows(run, int(thresholds.max_records))
    findings, skipped = gradient_path_findings(rows, thresholds)
    result.findings.extend(findings)
    result.skipped.extend(skipped)
    if "act_kurtosis" in stats:
        result.findings.extend(kurtosis_growing(run, names, thresholds))
    if set(read_by("batch_above_noise_scale")) <= stats:
        findings, skipped = batch_above_noise_scale(run, thresholds)
        result.findings.extend(findings)
        result.skipped.extend(skipped)
    return result


def _thresholds(thresholds, overrides) -> Thresholds:
    base = asdict(thresholds) if thresholds is not None else {}
    valid = {f.name for f in fields(Thresholds)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise UsageError(f"unknown threshold(s) {unknown}; valid: {', '.join(sorted(valid))}")
    result = Thresholds(**{**base, **overrides})
    result.check()
    return result


def _positive(values) -> np.ndarray:
    """float64 copy with non-finite and non-positive entries NaN (no usable gradient norm)."""
    out = np.array(values, dtype=np.float64)
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def _first_last_ratio(grad: np.ndarray, thresholds: Thresholds) -> float | None:
    ratio = _first_last_series(grad)
    if ratio is None:
        return None
    recent = nanmedian(ratio[recent_rows(len(ratio), thresholds.recent_fraction)])
    return None if np.isnan(recent) else float(recent)


def _first_last_series(grad: np.ndarray):
    """grad_norm of the first over the last layer with a gradient, per record (None if < 2)."""
    has_grad = np.flatnonzero(~np.isnan(grad).all(axis=0))
    if len(has_grad) < 2:
        return None
    return grad[:, has_grad[0]] / grad[:, has_grad[-1]]


def _exploding_depth(grad, steps, names, thresholds: Thresholds) -> list[Finding]:
    ratio = _first_last_series(grad)
    if ratio is None:
        return []
    limit = thresholds.exploding_depth_ratio
    recent = nanmedian(ratio[recent_rows(len(ratio), thresholds.recent_fraction)])
    if not recent > limit:
        return []
    first = names[np.flatnonzero(~np.isnan(grad).all(axis=0))[0]]
    step = first_step(ratio > limit, steps)
    return [
        Finding(
            "exploding_depth",
            str(first),
            step,
            float(recent),
            f"gradients grow towards the input: first/last-layer grad_norm {recent:.3g} > "
            f"{limit:g} (first from step {step})",
        )
    ]


def _decades(ratio: float) -> str:
    """How far a ratio is from 1, in words: "2.2 decades below 1"."""
    if not ratio > 0:
        return "no usable ratio"
    decades = math.log10(ratio)
    return f"{abs(decades):.1f} decades {'below' if decades < 0 else 'above'} 1"


def _signal_through_depth(signal, steps, names, thresholds: Thresholds) -> list[Finding]:
    """The backpropagated signal (act_grad_norm) shrinks or grows by more than
    `signal_depth_decades` from the last watched layer to the first (recent median)."""
    ratio = _first_last_series(signal)
    if ratio is None:
        return []
    recent = nanmedian(ratio[recent_rows(len(ratio), thresholds.recent_fraction)])
    limit = thresholds.signal_depth_decades
    if not (recent > 0 and abs(math.log10(recent)) > limit):
        return []
    with_signal = np.flatnonzero(~np.isnan(signal).all(axis=0))
    first, last = names[with_signal[0]], names[with_signal[-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.abs(np.log10(ratio)) > limit
    step = first_step(off & ((ratio < 1) == (recent < 1)), steps)
    if recent < 1:
        kind, what = "signal_vanishing_depth", "vanishes towards the input"
    else:
        kind, what = "signal_exploding_depth", "explodes towards the input"
    return [
        Finding(
            kind,
            str(first),
            step,
            float(recent),
            f"the backpropagated signal {what}: act_grad_norm at {first} / at {last} is "
            f"{recent:.3g}, {_decades(float(recent))} (> {limit:g}; first from step {step})",
        )
    ]


def _signal_exploding_at_init(run, names, thresholds: Thresholds) -> list[Finding]:
    """At initialization (a record of step 0, read exactly), the backpropagated signal grows by
    more than `signal_depth_decades` from the last watched layer to the first: the first
    updates of the layers near the input are that much larger, an effect that outlasts it (a
    plain 56-layer net's conv1 weight norm grows 170-fold in its first 100 steps)."""
    if int(run.steps[0]) != 0:
        return []
    _, first_record = run.read("act_grad_norm", start_step=0, stop_step=1)
    signal = _positive(first_record)[:1]
    ratio = _first_last_series(signal)
    limit = thresholds.signal_depth_decades
    if ratio is None or not (ratio[0] > 0 and math.log10(ratio[0]) > limit):
        return []
    with_signal = np.flatnonzero(~np.isnan(signal[0]))
    first, last = names[with_signal[0]], names[with_signal[-1]]
    value = float(ratio[0])
    return [
        Finding(
            "signal_exploding_depth",
            str(first),
            0,
            value,
            f"at initialization the backpropagated signal explodes towards the input: "
            f"act_grad_norm at {first} / at {last} is {value:.3g} at step 0, "
            f"{_decades(value)} (> {limit:g}): the first updates of the layers near the input "
            "are that much larger (a smaller initialization, residual connections or a warm-up "
            "tame it)",
        )
    ]


def _signal_collapse(signal, steps, names, thresholds: Thresholds) -> list[Finding]:
    """A layer's backpropagated signal falls below `signal_collapse_ratio` x its early
    baseline (recent median): the loss no longer reaches it."""
    baseline = _baseline(signal, thresholds)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = signal / baseline
    limit = thresholds.signal_collapse_ratio
    return _layers_past_limit(
        relative,
        lambda v: v < limit,
        steps,
        names,
        thresholds,
        "signal_collapse",
        lambda name, value, step: (
            f"{name}: act_grad_norm fell to {value:.2g} of its early value "
            f"(< {limit:g}, first at step {step})"
        ),
    )


def _baseline(values, thresholds: Thresholds) -> np.ndarray:
    """Each layer's median over the earliest `baseline_fraction` of rows."""
    rows = slice(0, max(1, math.ceil(len(values) * thresholds.baseline_fraction)))
    return nanmedian(values[rows], axis=0)


def _exploding_steps(grad, steps, names, thresholds: Thresholds) -> list[Finding]:
    baseline = _baseline(grad, thresholds)
    with np.errstate(invalid="ignore", divide="ignore"):
        growth = grad / baseline
    limit = thresholds.exploding_step_ratio
    over = growth > limit
    found = []
    for j in np.flatnonzero(over.any(axis=0)):
        peak = float(np.nanmax(growth[:, j]))
        peak_step = int(steps[int(np.nanargmax(growth[:, j]))])
        step = first_step(over[:, j], steps)
        found.append(
            Finding(
                "exploding_steps",
                str(names[j]),
                step,
                peak,
                f"{names[j]}: grad_norm reached {peak:.3g}x its early median at step "
                f"{peak_step} (above {limit:g}x from step {step})",
            )
        )
    return found


def _layers_past_limit(values, crosses, steps, names, thresholds, kind, describe):
    """One finding per layer whose recent median of `values` [records, L] `crosses` the limit
    (a function of an array, giving a bool mask), dated at its first record that crossed it."""
    recent = nanmedian(values[recent_rows(len(values), thresholds.recent_fraction)], axis=0)
    found = []
    for j in np.flatnonzero(crosses(recent)):
        step = first_step(crosses(values[:, j]), steps)
        value = float(recent[j])
        found.append(Finding(kind, str(names[j]), step, value, describe(names[j], value, step)))
    return found


def _vanishing(grad, steps, names, thresholds: Thresholds) -> list[Finding]:
    median = nanmedian(grad, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = grad / median[:, None]
    limit = thresholds.vanishing_ratio
    return _layers_past_limit(
        relative,
        lambda v: v < limit,
        steps,
        names,
        thresholds,
        "vanishing",
        lambda name, value, step: (
            f"{name}: grad_norm is {value:.2g} of the median layer's "
            f"(< {limit:g}, first at step {step})"
        ),
    )


def _replayed_nonfinite(run) -> list[Finding]:
    """The origins the flight recorder stored (one per tripped step, in step order)."""
    events = run.events
    origins = events[events["kind"] == "nonfinite"]
    return [
        Finding(
            "nonfinite",
            row["layer"],
            int(row["step"]),
            None if math.isnan(row["op_absmax"]) else float(row["op_absmax"]),
            row["message"],
            phase=row["phase"],
            op=row["op"],
        )
        for _, row in origins.iterrows()
    ]


def _first_nonfinite(run, names, stats) -> list[Finding]:
    """The first non-finite value, scanning every record exactly: the earliest step, then in
    the order a step computes them: the shallowest weight or activation (forward pass), else
    the shallowest gradient.

    Non-finite means: grad_nonfinite > 0, an inf, a NaN weight norm in a layer that owns
    parameters, or a NaN in a layer that had a finite value at an earlier record (a layer NaN
    from the start had no gradient, or was never called, which is not an error).
    """
    hits = [_scan_stat(run, s) for s in NONFINITE_STATS if s in stats]
    hits = [hit for hit in hits if hit is not None]  # (step, layer position, stat, value)
    if not hits:
        return []
    first = min(step for step, _, _, _ in hits)
    hits = [hit for hit in hits if hit[0] == first]
    forward = [hit for hit in hits if hit[2] in _FORWARD_STATS]
    step, j, stat, value = min(forward or hits, key=lambda hit: hit[1])
    message = f"{names[j]}: first non-finite value at step {step} ({stat} = {value:g})"
    gradients = [hit for hit in hits if hit[2] not in _FORWARD_STATS]
    if forward and gradients:
        message += "; that step's gradients are non-finite too"
    return [Finding("nonfinite", str(names[j]), step, value, message)]


_FORWARD_STATS = ("weight_norm", "act_absmax")  # computed before a step's gradients


def _scan_stat(run, stat: str):
    """First (step, layer, stat, value) where `stat` turns non-finite, or None."""
    steps = np.asarray(run.steps)
    seen_finite = np.zeros(len(run.layers), dtype=bool)
    if stat == "weight_norm":  # NaN only without parameters, or with NaN weights
        seen_finite = run.layers["params"].to_numpy() > 0
    for begin in range(0, len(steps), SCAN_CHUNK_RECORDS):
        end = min(begin + SCAN_CHUNK_RECORDS, len(steps))
        lo, hi = int(steps[begin]), int(steps[end - 1])
        got_steps, values = run.read(stat, start_step=lo, stop_step=hi + 1)
        got_steps = np.asarray(got_steps)
        keep = (got_steps >= lo) & (got_steps <= hi)
        got_steps, values = got_steps[keep], np.asarray(values, dtype=np.float64)[keep]
        if stat == "grad_nonfinite":
            bad = np.nan_to_num(values, nan=0.0) > 0
        else:
            finite = np.isfinite(values)
            earlier = np.logical_or.accumulate(np.vstack([seen_finite, finite]), axis=0)[:-1]
            bad = np.isinf(values) | (np.isnan(values) & earlier)
            seen_finite |= finite.any(axis=0)
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            j = int(np.argmax(bad[row]))
            return int(got_steps[row]), j, stat, float(values[row, j])
    return None
