"""Helpers shared by the figure builders: run lists, labels, value cleaning, finite checks."""

from pathlib import Path

import numpy as np

from gradscope.errors import UsageError
from gradscope.store._names import path_label


def as_run_list(runs) -> list:
    """The runs as a non-empty list (a single run is accepted too)."""
    if hasattr(runs, "stat") and hasattr(runs, "layers"):
        return [runs]
    runs = list(runs)
    if not runs:
        raise UsageError("no runs given: pass at least one run opened with gradscope.open_run")
    return runs


def run_model(run) -> str:
    """What the run is: the model name `gradscope record` stores, else the model class name."""
    attrs = getattr(run, "attrs", {}) or {}
    for key in ("model", "model_class"):
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return Path(run.path).stem


def run_label(run) -> str:
    """Short label of a run: "<folder>/<file stem>", e.g. "worked/resnet56".

    `gradscope record` names each file after its model, so the label names the model and its
    experiment folder; a file whose stem is not its recorded model name adds the model, as in
    "exp/lr01 (resnet56)".
    """
    label = path_label(run.path)
    model = (getattr(run, "attrs", {}) or {}).get("model")
    if isinstance(model, str) and model and model != Path(run.path).stem:
        label = f"{label} ({model})"
    return label


def short_labels(runs) -> list[str]:
    """The runs' labels, without their folder when they all share one ("plain56", "resnet56"
    for two runs of worked/), else in full."""
    labels = [run_label(run) for run in runs]
    parts = [label.split("/", 1) for label in labels]
    if all(len(p) == 2 for p in parts) and len({p[0] for p in parts}) == 1:
        names = [p[1] for p in parts]
        if len(set(names)) == len(names):
            return names
    return labels


def check_stat(run, stat: str) -> None:
    """Raise UsageError unless `stat` is recorded in `run`."""
    if stat not in run.stats:
        raise UsageError(
            f"statistic {stat!r} is not in {run.path}; it records: {', '.join(run.stats)}"
        )


def check_has_records(run) -> None:
    """Raise UsageError when `run` holds no records yet."""
    if len(run.steps) == 0:
        raise UsageError(f"run {run.path} has no records yet; wait for the recorder to flush")


def log10_magnitude(values: np.ndarray) -> np.ndarray:
    """log10(|values|) as float32, with NaN where the value is NaN, infinite or zero."""
    out = np.abs(values, dtype=np.float32)  # a new array: log10 below works in place
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log10(out, out=out)
    out[~np.isfinite(out)] = np.nan
    return out


def finite_or_nan(values: np.ndarray, positive: bool = False) -> np.ndarray:
    """A float copy of `values` with non-finite (and, if `positive`, non-positive) entries NaN."""
    out = np.array(values, dtype=np.float64)
    bad = ~np.isfinite(out)
    if positive:
        bad |= out <= 0
    out[bad] = np.nan
    return out


def shared_range(arrays, symmetric: bool = False):
    """(min, max) over the finite entries of `arrays`, or None when there are none."""
    lows, highs = [], []
    for a in arrays:
        if a.size and not np.isnan(a).all():
            lows.append(float(np.nanmin(a)))
            highs.append(float(np.nanmax(a)))
    if not lows:
        return None
    low, high = min(lows), max(highs)
    if symmetric:
        bound = max(abs(low), abs(high)) or 1.0
        return -bound, bound
    if low == high:
        return low - 0.5, high + 0.5
    return low, high


def no_finite_sentence(run, stat: str, where: str = "at any layer or record") -> str:
    """The one sentence that says `stat` of `run` holds no finite number."""
    return f"{run_label(run)} has no finite {stat} value {where} (all NaN or inf)"


def has_finite(values) -> bool:
    """True when `values` hold at least one finite number."""
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).any())


def require_finite(run, stat: str, values: np.ndarray, where: str = "at any layer or record"):
    """Raise UsageError, in one sentence, when `values` of `stat` hold no finite number."""
    if not has_finite(values):
        raise UsageError(no_finite_sentence(run, stat, where))


def add_notes(fig, notes) -> None:
    """Write `notes` (sentences about runs a figure could not draw) above its plot area, and
    keep them in `layout.meta["notes"]` so the dashboard can show them in the panel's message."""
    notes = [n for n in notes if n]
    if not notes:
        return
    fig.add_annotation(
        text="<br>".join(notes),
        xref="paper",
        yref="paper",
        x=0.0,
        y=1.0,
        xanchor="left",
        yanchor="bottom",
        showarrow=False,
        align="left",
        font={"color": "#a61b1b"},
    )
    meta = dict(fig.layout.meta or {})
    meta["notes"] = list(meta.get("notes", [])) + notes
    fig.update_layout(meta=meta)


NOTE_LINE_PIXELS = 17  # height of one note line above subplots


def add_notes_above_panels(fig, notes) -> None:
    """`add_notes` for a figure of subplots: the notes go between the title and the subplots'
    own titles, with the top margin grown to hold them."""
    notes = [n for n in notes if n]
    if not notes:
        return
    add_notes(fig, notes)
    fig.layout.annotations[-1].update(y=1.08)
    fig.update_layout(margin={"t": 110 + NOTE_LINE_PIXELS * len(notes)})
