"""One colour per run, the same in every figure: chosen from the run's label, not its position."""

import zlib

import plotly.colors

from gradscope.figures._common import run_label

# D3's category10 without its grey and olive, then ColorBrewer's Dark2 without the hues D3
# already has: 14 colours that read on white and in print, none pale.
_D3_DROPPED = {"#7F7F7F", "#BCBD22"}
_DARK2_KEPT = (
    "rgb(27,158,119)",
    "rgb(117,112,179)",
    "rgb(231,41,138)",
    "rgb(102,166,30)",
    "rgb(230,171,2)",
    "rgb(166,118,29)",
)
PALETTE = tuple(c for c in plotly.colors.qualitative.D3 if c not in _D3_DROPPED) + _DARK2_KEPT


def preferred_slot(key: str) -> int:
    """The palette position a run with this label takes when it is free (stable everywhere)."""
    return zlib.crc32(key.encode("utf-8")) % len(PALETTE)


def assign_colours(keys, taken=()) -> dict:
    """{key: colour} for labels in priority order: each takes its preferred colour, or the
    next one no earlier key (nor `taken`) has; colours repeat only past len(PALETTE) keys."""
    used = {PALETTE.index(c) for c in taken if c in PALETTE}
    out = {}
    for key in keys:
        if key in out:
            continue
        first = preferred_slot(key)
        free = [s % len(PALETTE) for s in range(first, first + len(PALETTE))]
        free = [s for s in free if s not in used]
        slot = free[0] if free else first
        used.add(slot)
        out[key] = PALETTE[slot]
    return out


def run_colours(runs, colours=None) -> list[str]:
    """The colour of each run: from `colours` ({run label: colour}, as the dashboard assigns
    them over its whole runs folder) where given, else assigned by `assign_colours` over these
    runs in creation order, avoiding the colours already given."""
    colours = dict(colours or {})
    labels = [run_label(run) for run in runs]
    missing = [label for label in labels if label not in colours]
    if missing:
        order = sorted(
            (str(run.attrs.get("created", "")), label)
            for run, label in zip(runs, labels, strict=True)
            if label in missing
        )
        colours.update(assign_colours([label for _, label in order], taken=colours.values()))
    return [colours[label] for label in labels]
