"""A diagnosis finding, and the row helpers the diagnosis rules share (no torch)."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from gradscope._json import json_number


@dataclass
class Finding:
    """One problem found: its kind, where (layer, first step), a value and a sentence."""

    kind: str  # one of diagnosis.KIND_ORDER
    layer: str | None  # qualified layer name, None when the finding is about the whole net
    step: int | None  # first step at which the condition held
    value: float | None  # the measured quantity compared with the threshold
    message: str
    phase: str | None = None  # "nonfinite" found by the replay: where in the step (see _origin)
    op: str | None = None  # "nonfinite" found by the replay: the ATen op that made the value

    def to_dict(self) -> dict:
        """JSON-able dict; a non-finite value is written as the string "nan", "inf" or "-inf"."""
        out = asdict(self)
        out["value"] = json_number(self.value)
        return out


def recent_rows(n: int, fraction: float) -> slice:
    """The latest `fraction` of `n` rows (at least one)."""
    return slice(n - max(1, math.ceil(n * fraction)), n)


def nanmedian(values, axis=None):
    """np.nanmedian without the warning for all-NaN slices (they give NaN, as intended)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def first_step(mask: np.ndarray, steps: np.ndarray) -> int:
    """The step of the first row where `mask` holds."""
    return int(steps[int(np.argmax(mask))])


def since_step(mask: np.ndarray, steps: np.ndarray) -> int:
    """The first step of the latest stretch of rows where `mask` [rows] holds."""
    held = np.flatnonzero(mask)
    if not len(held):
        return int(steps[-1])
    broken = np.flatnonzero(~mask[: held[-1]])
    return int(steps[broken[-1] + 1 if len(broken) else 0])
