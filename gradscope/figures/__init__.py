"""Figures: pure functions from opened runs to plotly Figures (flow, heatmaps, training curves)."""

import numpy as np

from gradscope.figures._common import as_run_list, run_label
from gradscope.figures._curves import training_curves
from gradscope.figures._flow import DEPTH_AXES, flow_curve
from gradscope.figures._heatmap import depth_step_heatmap, ratio_heatmap


def available_steps(runs) -> np.ndarray:
    """Sorted union of the recorded steps of `runs` (int64), e.g. for a step slider."""
    runs = as_run_list(runs)
    return np.unique(np.concatenate([np.asarray(run.steps, dtype=np.int64) for run in runs]))


__all__ = [
    "DEPTH_AXES",
    "available_steps",
    "depth_step_heatmap",
    "flow_curve",
    "ratio_heatmap",
    "run_label",
    "training_curves",
]
