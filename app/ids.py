"""Component ids of the dashboard: fixed names for controls, a factory for panel parts."""

# Controls and shared state.
RUNS = "runs"  # dropdown: runs to compare (paths relative to the runs folder)
STAT = "stat"  # dropdown: statistic
LAYER_TYPES = "layer-types"  # dropdown: layer types to keep (empty = all)
LAYER_PATTERN = "layer-pattern"  # text: layer name pattern
STEP = "step"  # slider: index into the steps of the selected runs
STEP_INPUT = "step-input"  # number box beside the slider: the step, typed or shown
STEP_LABEL = "step-label"  # text: the step the slider points at
RATIO_NUMERATOR = "ratio-numerator"  # radio: which of the ratio's two runs is on top (0 or 1)
WINDOW = "window"  # number: records to average the flow curve over
SCALE = "scale"  # radio: log or linear values
DEPTH_AXIS = "depth-axis"  # radio: layers aligned by name, own layer index, normalized depth
LINES = "flow-lines"  # radio: one flow line per layer type, or one through all layers
SMOOTHING = "smoothing"  # slider: EMA weight of the training curves
RUN_SEARCH = "run-search"  # text: filters the run table
TIMER = "timer"  # interval: polls the runs folder for new records
VERSIONS = "run-versions"  # store: records and mtime of each selected run, changes drive redraws
RUN_LIST = "run-list"  # the run table: swatch, model, folder, records, state
PAGE_MESSAGE = "page-message"  # problems with the selection as a whole
DIAGNOSIS = "diagnosis"  # the diagnosis text of each selected run
NONFINITE = "nonfinite"  # above the panels: where each selected run's first inf/NaN appeared

# Figure panels, in page order, with their titles.
PANELS = {
    "flow": "Gradient flow across depth",
    "heatmap": "Depth x step heatmap",
    "ratio": "Ratio heatmap of the first two selected runs:",
    "training": "Training curves",
}


def panel_id(part: str, panel: str) -> dict:
    """The id of one part ("graph", "message", "png-button", ...) of one panel."""
    return {"part": part, "panel": panel}


# The value of each control, as (component id, property), by the name `Controls` gives it.
CONTROL_VALUES = {
    "runs": (RUNS, "value"),
    "stat": (STAT, "value"),
    "layer_types": (LAYER_TYPES, "value"),
    "layer_pattern": (LAYER_PATTERN, "value"),
    "step_index": (STEP, "value"),
    "window": (WINDOW, "value"),
    "scale": (SCALE, "value"),
    "depth_axis": (DEPTH_AXIS, "value"),
    "lines": (LINES, "value"),
    "smoothing": (SMOOTHING, "value"),
    "ratio_numerator": (RATIO_NUMERATOR, "value"),
}

# The probe view: probe files (gradscope probe), listed and shown apart from training runs.
PROBE_LIST = "probe-list"  # the probe files table in the sidebar
PROBE_RUNS = "probe-runs"  # dropdown: probe files to show
SPP_STAT = "spp-stat"  # dropdown: Brock et al.'s panels, or one statistic
SPP_LAYERS = "spp-layers"  # radio: the blocks' outputs, or every layer
WIDTH_STAT = "width-stat"  # dropdown: the coordinate check's statistic
WIDTH_STEP = "width-step"  # dropdown: the coordinate check's sweep step
PROBE_DIAGNOSIS = "probe-diagnosis"  # the diagnosis at initialization of each probe shown
PROBE_PANELS = {
    "spp": "Signal propagation at initialization",
    "widths": "Width sweep: coordinate check",
}


def probe_panel_id(part: str, panel: str) -> dict:
    """The id of one part of a probe panel (other keys than `panel_id`: the training panels'
    pattern-matching callbacks do not match it)."""
    return {"part": part, "probe_panel": panel}


# The probe view's control values, (component id, property) by name.
PROBE_VALUES = {
    "probes": (PROBE_RUNS, "value"),
    "spp_stat": (SPP_STAT, "value"),
    "spp_layers": (SPP_LAYERS, "value"),
    "width_stat": (WIDTH_STAT, "value"),
    "width_step": (WIDTH_STEP, "value"),
}
