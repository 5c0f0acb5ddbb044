"""Diagnosis rules of the large-model instruments: growing activation kurtosis, a batch size
far above the measured gradient noise scale."""

from __future__ import annotations

import math

import numpy as np

from gradscope.diagnosis._findings import Finding, first_step, nanmedian, recent_rows
from gradscope.errors import UsageError
from gradscope.store import NOISE_SCALE_WINDOW, noise_estimates, noise_scale


def kurtosis_growing(run, names, thresholds) -> list[Finding]:
    """One finding per layer whose recent median act_kurtosis is above `kurtosis_floor` and
    more than `kurtosis_growth_ratio` times its early median (its first `baseline_fraction`
    of records): outliers growing in its activations. Names the layer's outlier channel
    when the run records act_outlier_channel."""
    steps, kurtosis = run.read("act_kurtosis", max_records=int(thresholds.max_records))
    kurtosis = np.where(np.isfinite(kurtosis), kurtosis, np.nan).astype(np.float64)
    early = slice(0, max(1, math.ceil(len(kurtosis) * thresholds.baseline_fraction)))
    baseline = nanmedian(kurtosis[early], axis=0)
    recent = nanmedian(kurtosis[recent_rows(len(kurtosis), thresholds.recent_fraction)], axis=0)
    floor, ratio = thresholds.kurtosis_floor, thresholds.kurtosis_growth_ratio
    with np.errstate(invalid="ignore", divide="ignore"):
        over = (kurtosis > floor) & (kurtosis > ratio * baseline)
        growing = np.flatnonzero((recent > floor) & (recent > ratio * baseline))
    channels = _latest_channels(run, thresholds)
    found = []
    for j in growing:
        step = first_step(over[:, j], np.asarray(steps))
        channel = ""
        if channels is not None and np.isfinite(channels[j]):
            channel = f"; its outlier channel is {int(channels[j])}"
        found.append(
            Finding(
                "kurtosis_growing",
                str(names[j]),
                step,
                float(recent[j]),
                f"{names[j]}: activation kurtosis grew from {baseline[j]:.3g} to {recent[j]:.3g}"
                f" (above {floor:g} and {ratio:g}x its early median from step {step}: a few "
                f"units grow far larger than the rest{channel})",
            )
        )
    return found


def _latest_channels(run, thresholds) -> np.ndarray | None:
    """Per layer, the most frequent act_outlier_channel over the recent records (None if the
    run does not record it)."""
    if "act_outlier_channel" not in run.stats:
        return None
    _, channels = run.read("act_outlier_channel", max_records=int(thresholds.max_records))
    recent = channels[recent_rows(len(channels), thresholds.recent_fraction)]
    out = np.full(recent.shape[1], np.nan)
    for j in range(recent.shape[1]):
        seen = recent[np.isfinite(recent[:, j]), j].astype(np.int64)
        if len(seen):
            out[j] = np.bincount(seen).argmax()
    return out


def batch_above_noise_scale(run, thresholds) -> tuple[list[Finding], list[str]]:
    """A finding about the whole net when the batch in use is more than `batch_noise_ratio`
    times the model's gradient noise scale (median over the recent records of its value
    over windows of NOISE_SCALE_WINDOW records); and why the rule was skipped, if it was."""
    try:
        estimates = noise_estimates(run)
    except UsageError as error:  # the run does not record the noise scale's sums
        return [], [f"batch_above_noise_scale: {error}"]
    if not np.isfinite(estimates.grad_sq).any():
        return [], [
            "batch_above_noise_scale: no record has two or more small batches (gradient "
            "accumulation or data parallelism make them), so there is no noise scale"
        ]
    frame = noise_scale(run, NOISE_SCALE_WINDOW, groups={})
    model = frame["model"].to_numpy(dtype=np.float64)
    batch = estimates.batch
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = batch / model
    recent = recent_rows(len(ratio), thresholds.recent_fraction)
    value, noise, rows = (
        nanmedian(ratio[recent]),
        nanmedian(model[recent]),
        nanmedian(batch[recent]),
    )
    limit = thresholds.batch_noise_ratio
    if not value > limit:
        return [], []
    step = first_step(ratio > limit, estimates.steps)
    return [
        Finding(
            "batch_above_noise_scale",
            None,
            step,
            float(value),
            f"the batch in use ({rows:.0f} rows) is {value:.3g}x the model's gradient noise "
            f"scale ({noise:.3g} rows over windows of {NOISE_SCALE_WINDOW} records; above "
            f"{limit:g}x from step {step}): past the noise scale a larger batch adds little per "
            "step (McCandlish et al. 2018), so the same examples would buy more steps at a "
            "smaller batch",
        )
    ], []
