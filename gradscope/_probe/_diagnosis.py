"""The diagnosis of a probe file: the rules at initialization, and width stability.

At each width's record at initialization: the signal through depth backwards (act_grad_norm,
the training rules) and forwards (the average channel variance), residual branches that
dominate their skip, dead units, non-finite values, gradients exploding or vanishing through
depth, and layers with parameters that get no gradient. Across widths (a sweep): layers whose
mean |activation| grows or shrinks with width. Needs numpy only, like the rest of diagnose.
"""

from __future__ import annotations

import math

import numpy as np

from gradscope.diagnosis import (
    Diagnosis,
    Finding,
    Thresholds,
    _decades,
    _exploding_depth,
    _first_last_ratio,
    _positive,
    _signal_through_depth,
    _vanishing,
)
from gradscope.store import (
    probe_info,
    probe_layout,
    probe_summary,
    probe_values,
    width_exponents,
)
from gradscope.store._names import path_label

WIDTH_STAT = "act_abs_mean"  # the coordinate size a width-stable layer keeps (muP)
# Statistics scanned for non-finite values at initialization: a count of inf/NaN gradient
# elements, and an inf anywhere (NaN means "not measured" there: a parameter-free layer's
# grad_norm, a module never called).
NONFINITE_STATS = ("grad_nonfinite", "grad_norm", "act_grad_norm", "chan_var")


def diagnose_probe(run, thresholds: Thresholds) -> Diagnosis:
    """The diagnosis at initialization of an opened probe file (see the module docstring)."""
    info = probe_info(run)
    layout = probe_layout(run)
    names = run.layers["name"].astype(str).to_numpy()
    has_params = run.layers["params"].to_numpy() > 0
    result = Diagnosis(
        path=str(run.path),
        records=len(run.steps),
        layers=len(names),
        first_step=0,
        last_step=layout.steps,
        thresholds=thresholds,
        first_last_ratio=None,
        probe=info,
    )
    stats = set(run.stats)
    init = {stat: probe_values(run, stat, 0)[1] for stat in stats}  # [widths, layers] each
    for i, width in enumerate(layout.widths):
        at = {stat: values[i : i + 1] for stat, values in init.items()}  # [1, layers]
        found = _init_findings(at, names, has_params, info, thresholds)
        if layout.is_sweep:
            for finding in found:
                finding.message = f"width {width}: {finding.message}"
        result.findings.extend(found)
        if i == 0 and "grad_norm" in at:
            result.first_last_ratio = _first_last_ratio(_positive(at["grad_norm"]), thresholds)
        if i == 0 and "act_grad_norm" in at:
            result.signal_ratio = _first_last_ratio(_positive(at["act_grad_norm"]), thresholds)
    if layout.is_sweep and WIDTH_STAT in stats:
        step = layout.steps
        widths, values = probe_values(run, WIDTH_STAT, step)
        result.findings.extend(width_findings(widths, values, names, step, thresholds))
    elif layout.is_sweep:
        result.skipped.append(f"width rule: the probe file does not record {WIDTH_STAT}")
    return result


def probe_heading(diagnosis: Diagnosis) -> str:
    """The first line of a probe's diagnosis text."""
    return (
        f"diagnosis at initialization of {path_label(diagnosis.path)} ({diagnosis.layers} "
        f"layers): probe of {probe_summary(diagnosis.probe or {})}"
    )


def _init_findings(at, names, has_params, info, thresholds) -> list[Finding]:
    """The findings at one width's record at initialization (arrays [1, layers])."""
    steps = np.zeros(1, dtype=np.int64)
    found = _nonfinite(at, names)
    if "act_grad_norm" in at:
        found += _signal_through_depth(_positive(at["act_grad_norm"]), steps, names, thresholds)
    if "chan_var" in at:
        found += _activations_through_depth(at["chan_var"][0], names, info, thresholds)
    if "res_ratio" in at:
        found += _residual_dominates(at["res_ratio"][0], names, thresholds)
    if "grad_norm" in at:
        grad = _positive(at["grad_norm"])
        found += _exploding_depth(grad, steps, names, thresholds)
        found += _vanishing(grad, steps, names, thresholds)
        # parameter-free layers (ReLUs, blocks) have no gradient of their own: not a finding
        found += _no_gradient(grad[:, has_params], names[has_params])
    if "dead_frac" in at:
        found += _dead_at_init(at["dead_frac"][0], names, thresholds)
    return found


def _no_gradient(grad, names) -> list[Finding]:
    """Layers with parameters and no gradient at initialization: frozen, or cut from the loss."""
    return [
        Finding(
            "no_gradient",
            str(names[j]),
            None,
            None,
            f"{names[j]}: no gradient at initialization (frozen, or cut from the loss)",
        )
        for j in np.flatnonzero(np.isnan(grad).all(axis=0))
    ]


def _nonfinite(at, names) -> list[Finding]:
    """The shallowest layer with a non-finite gradient element, or an inf in a statistic."""
    for j, name in enumerate(names):
        for stat in (s for s in NONFINITE_STATS if s in at):
            value = float(at[stat][0, j])
            if value > 0 if stat == "grad_nonfinite" else math.isinf(value):
                return [
                    Finding(
                        "nonfinite",
                        str(name),
                        0,
                        value,
                        f"{name}: non-finite value at initialization ({stat} = {value:g})",
                    )
                ]
    return []


def _profile_layers(names, info) -> tuple[np.ndarray, str]:
    """Positions of the layers the forward profile is read at: the blocks' outputs when the
    probe recognised at least two (Brock et al.'s plot), else every layer; and their kind."""
    blocks = set((info or {}).get("blocks") or ())
    positions = np.flatnonzero([name in blocks for name in names])
    if len(positions) >= 2:
        return positions, "block"
    return np.arange(len(names)), "layer"


def _activations_through_depth(chan_var, names, info, thresholds: Thresholds) -> list[Finding]:
    """The forward signal's scale (square root of the average channel variance) at the last
    block (or layer) over the first is more than `signal_depth_decades` away from 1."""
    positions, kind = _profile_layers(names, info)
    scale = np.sqrt(_positive(chan_var[positions]))
    present = np.flatnonzero(np.isfinite(scale))
    if len(present) < 2:
        return []
    first, last = positions[present[0]], positions[present[-1]]
    ratio = float(scale[present[-1]] / scale[present[0]])
    limit = thresholds.signal_depth_decades
    if not abs(math.log10(ratio)) > limit:
        return []
    if ratio > 1:
        finding_kind, what = "activations_exploding_depth", "grows"
    else:
        finding_kind, what = "activations_vanishing_depth", "shrinks"
    return [
        Finding(
            finding_kind,
            str(names[last]),
            0,
            ratio,
            f"the forward signal {what} through depth: the activations' scale (square root of "
            f"the average channel variance) at the last {kind}, {names[last]}, is {ratio:.3g} "
            f"times that at the first, {names[first]} ({_decades(ratio)}, > {limit:g})",
        )
    ]


def _residual_dominates(ratio, names, thresholds: Thresholds) -> list[Finding]:
    """Over the residual blocks, the median of res_ratio (branch / skip variance) is above the
    threshold: the blocks do not start near the identity (Brock et al. 2021; De and Smith
    2020)."""
    blocks = np.flatnonzero(np.isfinite(ratio))
    if not len(blocks):
        return []
    median = float(np.median(ratio[blocks]))
    limit = thresholds.residual_dominance_ratio
    if not median > limit:
        return []
    worst = blocks[int(np.argmax(ratio[blocks]))]
    above = int((ratio[blocks] > limit).sum())
    return [
        Finding(
            "residual_dominates",
            str(names[worst]),
            0,
            median,
            f"residual branches dominate the skip: branch / skip variance above {limit:g} in "
            f"{above} of {len(blocks)} residual blocks (median {median:.3g}, largest "
            f"{float(ratio[worst]):.3g} at {names[worst]}); the blocks do not start near the "
            "identity, so the signal grows block after block (scale each branch down: "
            "zero-initialise its last normalization's weight or layer, or multiply the branch "
            "by a small or zero-initialised scalar, as SkipInit and NF-ResNets do)",
        )
    ]


def _dead_at_init(dead_frac, names, thresholds: Thresholds) -> list[Finding]:
    """Layers where at least `init_dead_unit_frac` of the units are zero for every probe input."""
    limit = thresholds.init_dead_unit_frac
    return [
        Finding(
            "dead_at_init",
            str(names[j]),
            0,
            float(dead_frac[j]),
            f"{names[j]}: {float(dead_frac[j]):.1%} of its units are zero for every input of the "
            f"probe batch (>= {limit:.0%}): dead at initialization",
        )
        for j in np.flatnonzero(dead_frac >= limit)
    ]


def width_findings(widths, values, names, step: int, thresholds: Thresholds) -> list[Finding]:
    """Layers whose mean |activation| at sweep step `step` grows or shrinks with width:
    |exponent| of a power law fitted over the widths above `width_exponent`."""
    slopes = width_exponents(widths, values)
    limit = thresholds.width_exponent
    span = f"{widths[0]} to {widths[-1]}"
    found = []
    for j in np.flatnonzero(np.abs(np.nan_to_num(slopes)) > limit):
        slope = float(slopes[j])
        growth = float(values[-1, j] / values[0, j])
        kind, what = ("width_growing", "grows") if slope > 0 else ("width_shrinking", "shrinks")
        found.append(
            Finding(
                kind,
                str(names[j]),
                step,
                slope,
                f"{names[j]}: mean |activation| {what} with width as width^{slope:+.2f} at step "
                f"{step} ({growth:.3g}x from width {span}; |exponent| > {limit:g}): "
                "not width-stable",
            )
        )
    return found
