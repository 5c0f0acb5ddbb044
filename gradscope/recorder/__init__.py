"""The recorder: model and optimizer hooks that make one [stats, layers] record per step."""

from gradscope.recorder._layer_selection import owns_parameters, select_modules
from gradscope.recorder._recorder import DEFAULT_BATCH_SAMPLE, Recorder, model_device
from gradscope.recorder._stats import (
    ACT_GRAD_STATS,
    ACT_STATS,
    GNS_STATS,
    GRAD_STATS,
    PARAM_STATS,
    WEIGHT_STATS,
)
from gradscope.statistics import ALL_STATS

__all__ = [
    "ACT_GRAD_STATS",
    "ACT_STATS",
    "ALL_STATS",
    "GNS_STATS",
    "GRAD_STATS",
    "PARAM_STATS",
    "WEIGHT_STATS",
    "DEFAULT_BATCH_SAMPLE",
    "Recorder",
    "model_device",
    "owns_parameters",
    "select_modules",
]
