"""Where a run's first non-finite values appeared, marked on a depth x step panel."""

from __future__ import annotations

MARK_COLOUR = "#d62728"  # red on Viridis' blue-to-yellow


def nonfinite_marks(run, rows: list[str], suffix: str) -> tuple[list[dict], list[dict]]:
    """(traces, shapes) marking each stored origin of a non-finite value on the panel whose
    axes are x`suffix`, y`suffix` with layer rows `rows`: a cross at (step, layer) with the
    origin's sentence on hover, or a dotted vertical line at the step when the origin names
    no layer shown (the input, the loss, an unwatched operation, or a filtered-out layer)."""
    origins = marked_origins(run)
    traces, shapes = [], []
    shown = set(rows)
    on_rows = origins[origins["layer"].isin(shown)]
    if len(on_rows):
        traces.append(
            {
                "type": "scatter",
                "x": on_rows["step"].tolist(),
                "y": on_rows["layer"].tolist(),
                "customdata": on_rows["message"].tolist(),
                "mode": "markers",
                "marker": {
                    "symbol": "x",
                    "size": 14,
                    "color": MARK_COLOUR,
                    "line": {"width": 1.5, "color": "white"},
                },
                "xaxis": f"x{suffix}",
                "yaxis": f"y{suffix}",
                "name": "first non-finite value",
                "showlegend": False,
                "hovertemplate": "%{customdata}<extra>first non-finite value</extra>",
            }
        )
    for step in origins[~origins["layer"].isin(shown)]["step"]:
        shapes.append(
            {
                "type": "line",
                "x0": int(step),
                "x1": int(step),
                "y0": 0,
                "y1": 1,
                "xref": f"x{suffix}",
                "yref": f"y{suffix} domain",
                "line": {"color": MARK_COLOUR, "dash": "dot", "width": 2},
            }
        )
    return traces, shapes


def marked_origins(run):
    """The run's stored origins worth marking: a "weight" origin after another one is its
    consequence (the tripped update wrote the value into the weights) and is left out."""
    events = run.events
    origins = events[events["kind"] == "nonfinite"]
    replayed = origins["phase"] != "weight"
    first = origins[replayed]["step"].min() if replayed.any() else None
    if first is None:
        return origins
    return origins[replayed | (origins["step"] < first)]
