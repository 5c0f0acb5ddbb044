"""Probe files: run files that `gradscope.probe` writes, marked and described by one attribute.

A probe file is a run file (the same layout, read by `open_run`) whose `probe` attribute holds
a JSON object describing the probe. Its records are keyed by (width, sweep step): record
`i * (steps + 1) + t` holds step t at the i-th width of `widths` (a probe of one model has
`widths` [null], so its keys are its steps). Each record's width and step are also logged as
the metrics `width` and `probe_step`, so the file describes itself to any HDF5 reader.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradscope.errors import RunFileError, UsageError

PROBE_ATTR = "probe"  # the file attribute (JSON object) that marks a probe file
WIDTH_METRIC = "width"  # metric logged at each record: the width it was taken at
STEP_METRIC = "probe_step"  # and its step in the sweep (0: at initialization)


@dataclass(frozen=True)
class ProbeLayout:
    """Where each (width, sweep step) record of a probe file is."""

    widths: tuple  # the widths swept, in order; (None,) for a probe of one model
    steps: int  # optimizer steps after initialization: records at sweep steps 0..steps

    def key(self, width_index: int, step: int) -> int:
        """The record key (the file's `steps` value) of sweep step `step` at a width."""
        return width_index * (self.steps + 1) + step

    @property
    def is_sweep(self) -> bool:
        """True when the probe swept several widths."""
        return self.widths != (None,)


def probe_info(run) -> dict | None:
    """The `probe` attribute of an opened run (a dict), or None when it is not a probe file."""
    info = (getattr(run, "attrs", None) or {}).get(PROBE_ATTR)
    if info is None:
        return None
    if not isinstance(info, dict):
        raise RunFileError(f"{run.path}: its {PROBE_ATTR!r} attribute is not a JSON object")
    return info


def is_probe(run) -> bool:
    """True when `run` is a probe file written by `gradscope.probe`."""
    return probe_info(run) is not None


def probe_layout(run) -> ProbeLayout:
    """The (width, step) layout of a probe file's records; UsageError for another run."""
    info = probe_info(run)
    if info is None:
        raise UsageError(f"{run.path} is not a probe file (write one with gradscope probe)")
    try:
        widths = tuple(info.get("widths") or (None,))
        steps = int(info.get("steps", 0))
    except (TypeError, ValueError) as e:
        raise RunFileError(f"{run.path}: malformed {PROBE_ATTR!r} attribute: {e}") from e
    return ProbeLayout(widths, steps)


def probe_summary(info: dict) -> str:
    """A probe file's `probe` attribute in one line: what was probed, on what batches."""
    widths = info.get("widths")
    what = f"widths {', '.join(str(w) for w in widths)}" if widths else "one model"
    steps = int(info.get("steps", 0))
    if steps:
        what += f", then {steps} step{'s' * (steps != 1)}"
    batch = info.get("batch")
    if batch == "gaussian":
        on = f"a Gaussian batch of {info.get('batch_size')}"
    else:
        on = "the batches given" if batch == "callable" else "the batch given"
    found = info.get("blocks_found", "")
    return f"{what} on {on} (seed {info.get('seed')}); {found}" if found else f"{what} on {on}"


def probe_values(run, stat: str, step: int = 0) -> tuple[tuple, np.ndarray]:
    """(widths, values [widths, layers] float64) of `stat` at sweep step `step` of each width.

    A width whose record is missing (a probe file cut short) has a row of NaN.
    """
    layout = probe_layout(run)
    if not 0 <= int(step) <= layout.steps:
        raise UsageError(
            f"{run.path}: sweep step {step} is outside the probe's steps 0..{layout.steps}"
        )
    keys, values = run.read(stat)
    keys = np.asarray(keys)
    out = np.full((len(layout.widths), len(run.layers)), np.nan)
    for i in range(len(layout.widths)):
        found = np.flatnonzero(keys == layout.key(i, int(step)))
        if found.size:
            out[i] = values[found[0]]
    return layout.widths, out


def width_exponents(widths, values) -> np.ndarray:
    """Per column of `values` [widths, n], the least-squares slope of log(value) against
    log(width): the exponent p of value ~ width^p. NaN for a column without a positive
    finite value at every width."""
    x = np.log(np.asarray(widths, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.asarray(values, dtype=np.float64))
    usable = np.isfinite(y).all(axis=0)
    x = x - x.mean()
    slopes = np.full(y.shape[1], np.nan)
    centred = y[:, usable] - y[:, usable].mean(axis=0)
    slopes[usable] = (x @ centred) / (x @ x)
    return slopes
