"""Figures: pure functions from opened runs to plotly Figures (flow, heatmaps, training curves,
and for probe files the signal propagation plot and the coordinate check)."""

import numpy as np

from gradscope.figures._colours import PALETTE, assign_colours, run_colours
from gradscope.figures._common import as_run_list, run_label, run_model, short_labels
from gradscope.figures._curves import DEFAULT_SMOOTHING, training_curves
from gradscope.figures._flow import DEPTH_AXES, FLOW_LINES, flow_curve
from gradscope.figures._heatmap import depth_step_heatmap, nearest_positions, ratio_heatmap
from gradscope.figures._nonfinite_marks import marked_origins
from gradscope.figures._spp import SPP_LAYERS, SPP_STATS, signal_propagation
from gradscope.figures._widths import DEFAULT_WIDTH_STAT, layer_group, width_check
from gradscope.figures._words import stat_words


def available_steps(runs) -> np.ndarray:
    """Sorted union of the recorded steps of `runs` (int64), e.g. for a step slider."""
    runs = as_run_list(runs)
    return np.unique(np.concatenate([np.asarray(run.steps, dtype=np.int64) for run in runs]))


def latest_common_step(runs) -> int:
    """The latest step every run has reached: what "latest" means when comparing live runs."""
    return min(int(run.steps[-1]) for run in as_run_list(runs))


__all__ = [
    "DEFAULT_SMOOTHING",
    "DEFAULT_WIDTH_STAT",
    "DEPTH_AXES",
    "FLOW_LINES",
    "PALETTE",
    "SPP_LAYERS",
    "SPP_STATS",
    "assign_colours",
    "available_steps",
    "depth_step_heatmap",
    "flow_curve",
    "latest_common_step",
    "layer_group",
    "marked_origins",
    "nearest_positions",
    "ratio_heatmap",
    "run_colours",
    "run_label",
    "run_model",
    "signal_propagation",
    "short_labels",
    "stat_words",
    "training_curves",
    "width_check",
]
