"""Signal propagation plot (Brock et al. 2021): statistics against depth, one line per model."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradscope.errors import UsageError
from gradscope.figures._colours import assign_colours, run_colours
from gradscope.figures._common import (
    add_notes_above_panels,
    as_run_list,
    check_has_records,
    finite_or_nan,
    run_label,
)
from gradscope.figures._flow import _depth_positions, _record_at
from gradscope.figures._words import log_axis_labelled, stat_words
from gradscope.store import is_probe, probe_info, probe_layout, probe_values

# The average channel squared mean and channel variance at each block's output (Brock et al.'s
# first two panels), and the residual branch's variance over the skip's: their third panel
# shows the branch's variance alone, which normalization pins at 1 in BatchNorm ResNets.
SPP_STATS = ("chan_sq_mean", "chan_var", "res_ratio")
SPP_LAYERS = ("blocks", "all")  # the blocks' outputs (every layer for a run without blocks)


def signal_propagation(
    runs, stats=None, layers: str = "blocks", step: int = 0, log_y: bool = True, colours=None
) -> go.Figure:
    """Statistics against depth, one panel per statistic and one line per model.

    `stats`: a statistic name or a list of them (default: Brock et al.'s three, SPP_STATS,
    those the runs hold). `layers="blocks"` reads each run at its blocks' outputs (the probe
    file lists them; a run without blocks is read at every layer, and a note says so), x being
    the block index; "all" reads every layer, aligned by name across runs. A probe file
    draws its record at sweep step `step` (0: at initialization), one line per width for a
    width sweep; another run file draws its record nearest to step `step`. `colours`:
    {line label: colour}. Non-positive and non-finite values are left out on a log axis.
    """
    runs = as_run_list(runs)
    if layers not in SPP_LAYERS:
        raise UsageError(f"layers must be one of {SPP_LAYERS}, not {layers!r}")
    asked = stats is not None
    stats = _chosen_stats(runs, stats)
    for run in runs:
        check_has_records(run)
    lines = _lines(runs, int(step), colours)
    all_x, all_title = _depth_positions(runs, "aligned") if layers == "all" else (None, None)
    notes, traces, fallback = [], {stat: [] for stat in stats}, []
    for line in lines:
        positions, x, no_blocks = _line_layers(line.run, layers, all_x)
        fallback.append(no_blocks)
        note = f"{run_label(line.run)}: no blocks recognised, every layer is drawn"
        if no_blocks and note not in notes:
            notes.append(note)
        names = line.run.layers["name"].astype(str).to_numpy()[positions]
        for stat in (s for s in stats if s in line.run.stats):
            y = finite_or_nan(line.values(stat)[positions], positive=log_y)
            if np.isfinite(y).any():
                traces[stat].append(_trace(line, stat, x, y, names))
    empty = [stat for stat in stats if not traces[stat]]
    if len(empty) == len(stats):
        raise UsageError(f"no run has a finite {' or '.join(stats)} value at these layers")
    if asked:
        notes += [f"no run has a finite {stat} value at these layers" for stat in empty]
    else:  # a default panel nothing can fill (res_ratio without residual blocks) is left out
        stats = [stat for stat in stats if traces[stat]]
    titles = [stat_words(s) for s in stats]
    fig = make_subplots(rows=1, cols=len(stats), subplot_titles=titles, horizontal_spacing=0.08)
    shown = set()
    for col, stat in enumerate(stats, start=1):
        for trace in traces[stat]:
            trace.showlegend = trace.name not in shown
            shown.add(trace.name)
            fig.add_trace(trace, row=1, col=col)
        if log_y and traces[stat]:
            values = np.concatenate([np.asarray(t.y, dtype=np.float64) for t in traces[stat]])
            fig.update_yaxes(log_axis_labelled(values), row=1, col=col)
        fig.update_xaxes(title_text=_x_title(layers, all_title, fallback), row=1, col=col)
        fig.update_yaxes(title_text=stat, row=1, col=col)
    add_notes_above_panels(fig, notes)
    when = "at initialization" if step == 0 else f"at step {step}"
    fig.update_layout(
        title={"text": f"Signal propagation {when} (Brock et al. 2021)"},
        hovermode="closest",
        uirevision=f"spp:{','.join(stats)}:{layers}",
    )
    return fig


def _trace(line, stat: str, x, y, names) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=y,
        mode="lines+markers",
        name=line.label,
        legendgroup=line.label,
        line={"color": line.colour},
        marker={"size": 4, "color": line.colour},
        customdata=names,
        hovertemplate=f"%{{customdata}}<br>{stat} = %{{y:.4g}}<extra>{line.label}</extra>",
    )


def _x_title(layers: str, all_title: str | None, fallback: list[bool]) -> str:
    if layers == "all":
        return all_title
    if all(fallback):
        return "layer (input = 0)"
    if any(fallback):
        return "block, or layer (input = 0)"
    return "block (input = 0)"


class _Line:
    """One line of the plot: a run (and, in a width sweep, one width) at one step."""

    def __init__(self, run, label: str, colour: str, width_index, step: int):
        self.run, self.label, self.colour = run, label, colour
        self._width_index, self._step = width_index, step

    def values(self, stat: str) -> np.ndarray:
        """The statistic at every layer of the run, float64."""
        if self._width_index is None:
            return _record_at(self.run, stat, self._step)[0]
        return probe_values(self.run, stat, self._step)[1][self._width_index]


def _lines(runs, step: int, colours) -> list[_Line]:
    """A line per run, or per width of a width-sweep probe; a whole run keeps its own colour."""
    entries = []  # (run, width index: None for a run file that is not a probe, label)
    for run in runs:
        if not is_probe(run):
            entries.append((run, None, run_label(run)))
            continue
        layout = probe_layout(run)
        if step > layout.steps:
            raise UsageError(f"{run_label(run)} has sweep steps 0..{layout.steps}, not {step}")
        if layout.is_sweep:
            label = run_label(run)
            entries += [(run, i, f"{label} width {w}") for i, w in enumerate(layout.widths)]
        else:
            entries.append((run, 0, run_label(run)))
    whole = [run for run, _, label in entries if label == run_label(run)]
    palette = dict(zip([run_label(r) for r in whole], run_colours(whole, colours), strict=True))
    others = [label for _, _, label in entries if label not in palette]
    palette.update(assign_colours(others, taken=palette.values()))
    return [_Line(run, label, palette[label], i, step) for run, i, label in entries]


def _line_layers(run, layers: str, all_x):
    """(positions of the layers drawn, their x, whether a "blocks" run had none)."""
    if layers == "all":
        positions = np.arange(len(run.layers))
        return positions, all_x(run), False
    blocks = set((probe_info(run) or {}).get("blocks") or ())
    names = run.layers["name"].astype(str).to_numpy()
    positions = np.flatnonzero([name in blocks for name in names])
    if not len(positions):
        positions = np.arange(len(names))
        return positions, positions, True
    return positions, np.arange(len(positions)), False


def _chosen_stats(runs, stats) -> list[str]:
    """The statistics to draw: those asked for (each in some run), or Brock et al.'s three
    that some run holds."""
    held = set().union(*(set(run.stats) for run in runs))
    if stats is None:
        chosen = [s for s in SPP_STATS if s in held]
        if not chosen:
            raise UsageError(
                f"no run holds {', '.join(SPP_STATS)} (a probe file does: gradscope probe); "
                "name a statistic to draw"
            )
        return chosen
    chosen = [stats] if isinstance(stats, str) else list(stats)
    missing = [s for s in chosen if s not in held]
    if missing or not chosen:
        raise UsageError(
            f"statistic {', '.join(missing) or '(none)'} is in none of the runs; they hold: "
            f"{', '.join(sorted(held))}"
        )
    return chosen
