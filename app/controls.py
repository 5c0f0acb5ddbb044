"""The dashboard's control values: checked as they arrive from the browser, and their options."""

from __future__ import annotations

from dataclasses import dataclass

from gradscope import figures
from gradscope.errors import UsageError

SCALES = ("log", "linear")
DEFAULT_STAT = "grad_norm"
DEFAULT_SELECTED_RUNS = 2  # runs selected on page load: the newest ones, enough for a ratio
MAX_SELECTED_RUNS = 12  # more runs than this make unreadable figures


@dataclass(frozen=True)
class Controls:
    """What the user chose, checked: every value here came from an untrusted request."""

    runs: tuple[str, ...] = ()  # paths relative to the runs folder, not yet resolved
    stat: str | None = None
    layer_types: tuple[str, ...] | None = None  # None keeps every type
    layer_pattern: str | None = None  # fnmatch glob on layer names; None keeps every name
    step_index: int | None = None  # index into the union of steps; None is the latest step
    window: int | None = None  # records to average the flow curve over; None is one record
    log_scale: bool = True
    depth_axis: str = "aligned"
    lines: str = "by_type"  # flow curve: a line per layer type, or one through all layers
    smoothing: float = figures.DEFAULT_SMOOTHING  # EMA weight of the training curves
    ratio_numerator: int = 0  # which of the first two runs is the ratio's numerator

    @classmethod
    def from_request(
        cls,
        runs=None,
        stat=None,
        layer_types=None,
        layer_pattern=None,
        step_index=None,
        window=None,
        scale="log",
        depth_axis="aligned",
        lines="by_type",
        smoothing=figures.DEFAULT_SMOOTHING,
        ratio_numerator=0,
    ) -> Controls:
        """Check raw callback values and build Controls; raise UsageError on anything odd."""
        return cls(
            runs=_run_list(runs),
            stat=_optional_text(stat, "statistic"),
            layer_types=_type_list(layer_types),
            layer_pattern=_optional_text(layer_pattern, "layer pattern"),
            step_index=_optional_int(step_index, "step", minimum=0),
            window=_optional_int(window, "window", minimum=1),
            log_scale=_choice(scale, SCALES, "scale") == "log",
            depth_axis=_choice(depth_axis, figures.DEPTH_AXES, "depth axis"),
            lines=_choice(lines, figures.FLOW_LINES, "flow lines"),
            smoothing=_smoothing(smoothing),
            ratio_numerator=_choice(ratio_numerator, (0, 1), "ratio numerator"),
        )

    def filters(self) -> dict:
        """The layer filter as keyword arguments of the figure functions."""
        return {"types": self.layer_types, "pattern": self.layer_pattern}


def _run_list(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UsageError("runs must be a list of run paths")
    if len(value) > MAX_SELECTED_RUNS:
        raise UsageError(f"select at most {MAX_SELECTED_RUNS} runs (got {len(value)})")
    return tuple(dict.fromkeys(value))  # drop repeats, keep order


def _type_list(value) -> tuple[str, ...] | None:
    if value is None or value == []:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UsageError("layer types must be a list of names")
    return tuple(value)


def _optional_text(value, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{what} must be text")
    value = value.strip()
    return value or None


def _optional_int(value, what: str, minimum: int) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise UsageError(f"{what} must be a whole number, got {value!r}")
    if value < minimum:
        raise UsageError(f"{what} must be at least {minimum}, got {value!r}")
    return int(value)


def _smoothing(value) -> float:
    if value is None:
        return figures.DEFAULT_SMOOTHING
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UsageError(f"smoothing must be a number in [0, 1), got {value!r}")
    return float(value)


def _choice(value, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise UsageError(f"{what} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def stat_options(runs) -> list[str]:
    """Statistics present in any of `runs`, in the order the files list them."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.stats))
    return list(names)


def pick_stat(current: str | None, available: list[str]) -> str | None:
    """Keep the user's statistic when it still exists, else the default, else the first."""
    for choice in (current, DEFAULT_STAT):
        if choice in available:
            return choice
    return available[0] if available else None


def layer_type_options(runs) -> list[str]:
    """Layer types present in any of `runs`, sorted by name."""
    types: set[str] = set()
    for run in runs:
        types.update(run.layers["type"].astype(str))
    return sorted(types)


def ratio_options(runs) -> list[dict]:
    """The two orientations of the ratio of the first two runs, as radio options: value 0
    puts the first on top ("plain56 / resnet56"), 1 the second."""
    if len(runs) < 2:
        return []
    first, second = figures.short_labels(runs[:2])
    return [
        {"label": f"{first} / {second}", "value": 0},
        {"label": f"{second} / {first}", "value": 1},
    ]


def flow_position(runs, step_index: int | None, window: int | None) -> dict:
    """The `step` / `window` arguments of the flow curve for the slider and the window size.

    The slider indexes the union of the runs' steps; its last position means "latest", so a
    live run is followed as it grows. A window of N records averages the N steps of the union
    that end at the slider's step.
    """
    if not runs or (step_index is None and window in (None, 1)):
        return {"step": None, "window": None}
    steps = figures.available_steps(runs)
    if len(steps) == 0:
        raise UsageError("the selected runs have no records yet")
    last = len(steps) - 1
    position = last if step_index is None else step_index
    if position > last:
        raise UsageError(f"step index {position} is beyond the runs ({len(steps)} steps)")
    if window is not None and window > 1:
        first = max(0, position - window + 1)
        return {"step": None, "window": (int(steps[first]), int(steps[position]) + 1)}
    return {"step": None if position == last else int(steps[position]), "window": None}
