"""The HDF5 run store: `RunWriter` writes run files, `open_run` reads them (docs/run-file.md)."""

from gradscope.store._blocks import block_means
from gradscope.store._noise_scale import (
    GNS_STATS,
    MODEL_COLUMN,
    NOISE_SCALE_WINDOW,
    LatestNoiseScale,
    NoiseEstimates,
    latest_noise_scale,
    noise_estimates,
    noise_scale,
)
from gradscope.store._probe import (
    PROBE_ATTR,
    STEP_METRIC,
    WIDTH_METRIC,
    ProbeLayout,
    is_probe,
    probe_info,
    probe_layout,
    probe_summary,
    probe_values,
    width_exponents,
)
from gradscope.store._reader import Run, open_run
from gradscope.store._writer import RunWriter

__all__ = [
    "GNS_STATS",
    "MODEL_COLUMN",
    "NOISE_SCALE_WINDOW",
    "LatestNoiseScale",
    "NoiseEstimates",
    "PROBE_ATTR",
    "STEP_METRIC",
    "WIDTH_METRIC",
    "ProbeLayout",
    "Run",
    "RunWriter",
    "block_means",
    "is_probe",
    "latest_noise_scale",
    "noise_estimates",
    "noise_scale",
    "open_run",
    "probe_info",
    "probe_layout",
    "probe_summary",
    "probe_values",
    "width_exponents",
]
