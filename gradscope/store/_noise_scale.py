"""The gradient noise scale from a run's raw sums (McCandlish et al. 2018, appendix A.1):
unbiased estimates of |G|^2 and tr(Sigma) per record, averaged over windows of records, then
divided, per layer, per group of layers and for the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gradscope.errors import UsageError
from gradscope.statistics import names_in

# The recorded sums (gradscope.statistics, group "gns"): per layer, the mean over a step's
# small batches of their squared gradient norm, the squared norm of the step's whole
# (large-batch) gradient, and the two batch sizes in rows (the small ones' harmonic mean; the
# same for every layer).
GNS_STATS = names_in("gns")
MODEL_COLUMN = "model"  # the whole model's column: every watched layer's sums together
NOISE_SCALE_WINDOW = 20  # records averaged (the record and those before it)
ONE_SMALL_BATCH = (
    "{path}: no record has two or more small batches, so there is no gradient noise scale: "
    "each backward pass on each rank is a small batch, so record a run with gradient "
    "accumulation (several backward passes per optimizer step) or data parallelism (DDP, FSDP2)"
)


@dataclass(frozen=True)
class NoiseEstimates:
    """Per record and layer, unbiased estimates of |G|^2 (the true gradient's squared norm)
    and tr(Sigma) (the trace of the per-example gradient covariance), in float64, NaN where
    a record did not measure them; and per record the batch sizes in rows."""

    steps: np.ndarray  # [records] int64
    layers: list[str]  # in depth order
    grad_sq: np.ndarray  # [records, layers]
    trace: np.ndarray  # [records, layers]
    batch: np.ndarray  # [records]: the large batch B
    small_batch: np.ndarray  # [records]: the small batches' (harmonic mean) size b


def noise_estimates(run) -> NoiseEstimates:
    """The estimates of every record of an opened run, from its `gns_*` statistics:

    |G|^2 = (B |G_B|^2 - b |G_b|^2) / (B - b),  tr(Sigma) = (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

    with |G_b|^2 the small batches' mean squared norm (b rows each) and |G_B|^2 the large
    batch's (B rows). Both are unbiased, so their means over records are too."""
    missing = [name for name in GNS_STATS if name not in run.stats]
    if missing:
        raise UsageError(
            f"{run.path} has no gradient noise scale sums ({', '.join(missing)}): record "
            "with stats=None (all) or stats including " + ", ".join(GNS_STATS)
        )
    small, large, b, big = (run.stat(name).astype(np.float64) for name in GNS_STATS)
    with np.errstate(invalid="ignore", divide="ignore"):
        grad_sq = (big * large - b * small) / (big - b)
        trace = (small - large) / (1.0 / b - 1.0 / big)
    measured = np.isfinite(grad_sq) & np.isfinite(trace) & (b < big)
    grad_sq[~measured] = np.nan
    trace[~measured] = np.nan
    return NoiseEstimates(
        steps=np.asarray(run.steps, dtype=np.int64),
        layers=run.layers["name"].astype(str).tolist(),
        grad_sq=grad_sq,
        trace=trace,
        batch=_per_record(big),
        small_batch=_per_record(np.where(measured, b, np.nan)),
    )


def noise_scale(run, window: int = NOISE_SCALE_WINDOW, groups: dict | None = None) -> pd.DataFrame:
    """The simple noise scale B_noise = tr(Sigma) / |G|^2 in rows (examples), indexed by step:
    at each record, the means of the |G|^2 and tr(Sigma) estimates over the last `window`
    records (those that measured them) divided. One column per layer (or per group of
    `groups`, {name: [layer names]}, each group's estimates summed over its layers), and
    `"model"` for every watched layer together.

    NaN where the window measured nothing, or where its |G|^2 is not above 0 or its
    tr(Sigma) below 0: the gradient's signal or noise is not resolved by that many records.
    """
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise UsageError(f"window must be a positive number of records, not {window!r}")
    estimates = noise_estimates(run)
    if len(estimates.steps) and not np.isfinite(estimates.grad_sq).any():
        raise UsageError(ONE_SMALL_BATCH.format(path=run.path))
    if groups is None:
        columns = {name: [name] for name in estimates.layers}
    else:
        columns = {str(name): list(layers) for name, layers in groups.items()}
    columns[MODEL_COLUMN] = estimates.layers
    position = {name: i for i, name in enumerate(estimates.layers)}
    out = {}
    for name, layers in columns.items():
        unknown = [layer for layer in layers if layer not in position]
        if unknown:
            raise UsageError(f"group {name!r}: no layer named {unknown[0]!r} in {run.path}")
        index = [position[layer] for layer in layers]
        grad_sq = _layer_sum(estimates.grad_sq[:, index])
        trace = _layer_sum(estimates.trace[:, index])
        out[name] = _windowed_ratio(trace, grad_sq, int(window))
    frame = pd.DataFrame(out, index=pd.Index(estimates.steps, name="step"))
    frame.columns.name = None
    return frame


def _per_record(values: np.ndarray) -> np.ndarray:
    """A per-record size stored once per layer: the largest finite one, NaN if none."""
    finite = np.where(np.isfinite(values), values, -np.inf)
    top = finite.max(axis=1) if values.shape[1] else np.full(len(values), -np.inf)
    return np.where(np.isfinite(top), top, np.nan)


def _layer_sum(values: np.ndarray) -> np.ndarray:
    """Per record, the sum over layers that measured it; NaN where none did."""
    finite = np.isfinite(values)
    return np.where(finite.any(axis=1), np.where(finite, values, 0.0).sum(axis=1), np.nan)


def _windowed_ratio(numerator: np.ndarray, denominator: np.ndarray, window: int) -> np.ndarray:
    """Trailing means over `window` records (NaN records left out) of each, then divided;
    NaN where the window has no value, the denominator is not > 0 or the numerator < 0."""
    top = pd.Series(numerator).rolling(window, min_periods=1).mean().to_numpy()
    bottom = pd.Series(denominator).rolling(window, min_periods=1).mean().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = top / bottom
    return np.where((bottom > 0) & (top >= 0), ratio, np.nan)


@dataclass(frozen=True)
class LatestNoiseScale:
    """The model's noise scale at a run's latest record, and what it was measured on."""

    step: int  # the latest record's step
    first_step: int  # the first step of the window
    records: int  # records in the window
    value: float  # B_noise in rows (NaN: not resolved by the window)
    batch: float  # the large batch B in use at `step`, in rows
    small_batch: float  # the small batches' size b at `step`

    def to_dict(self) -> dict:
        """As JSON-able numbers (NaN as None)."""
        return {
            key: (None if isinstance(value, float) and not np.isfinite(value) else value)
            for key, value in self.__dict__.items()
        }


def latest_noise_scale(run, window: int = NOISE_SCALE_WINDOW) -> LatestNoiseScale | None:
    """The model's noise scale over the last `window` records of an opened run; None when the
    run has no gns_* statistics or no record. UsageError when no record had two or more small
    batches (see `noise_scale`)."""
    if not all(name in run.stats for name in GNS_STATS) or len(run.steps) == 0:
        return None
    frame = noise_scale(run, window, groups={})
    estimates = noise_estimates(run)
    first = max(0, len(frame) - int(window))
    return LatestNoiseScale(
        step=int(frame.index[-1]),
        first_step=int(frame.index[first]),
        records=len(frame) - first,
        value=float(frame[MODEL_COLUMN].iloc[-1]),
        batch=float(estimates.batch[-1]),
        small_batch=float(estimates.small_batch[-1]),
    )
