"""Titles in words for the statistics, and tick marks for log scales (decades only)."""

import math

import numpy as np

from gradscope.statistics import title


def stat_words(stat: str) -> str:
    """The statistic in words ("Gradient norm"); a name gradscope does not know stays as is."""
    return title(stat)


def decade_ticks(low: float, high: float) -> dict:
    """Colour-bar ticks for log10 values in [low, high]: one per decade, labelled 10^k."""
    first, last = math.ceil(low), math.floor(high)
    if last < first:  # less than a decade: label both ends
        values = [low, high]
        return {"tickvals": values, "ticktext": [f"{10**v:.3g}" for v in values]}
    step = max(1, math.ceil((last - first + 1) / 12))  # at most about a dozen labels
    values = list(range(first, last + 1, step))
    return {"tickvals": values, "ticktext": [f"10<sup>{v}</sup>" for v in values]}


def log_axis(values) -> dict:
    """Layout of a log axis over `values`: ticks at decades only, written as powers of ten,
    when the finite positive values span at least one decade (else plotly's own ticks)."""
    axis = {"type": "log", "exponentformat": "power"}
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and np.log10(values.max()) - np.log10(values.min()) >= 1:
        axis["dtick"] = 1
    return axis


def log_axis_labelled(values) -> dict:
    """`log_axis`, with ticks at 1, 2 and 5 times each power of ten, written out ("0.2"), when
    the values span under two decades (at most one decade tick would show otherwise)."""
    axis = log_axis(values)
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return axis
    low, high = np.log10(values.min()), np.log10(values.max())
    if high - low >= 2:
        return axis
    ticks = [
        m * 10.0**k
        for k in range(math.floor(low) - 1, math.ceil(high) + 1)
        for m in (1, 2, 5)
        if low - 0.15 <= math.log10(m * 10.0**k) <= high + 0.15
    ]
    axis.pop("dtick", None)
    return {**axis, "tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}
