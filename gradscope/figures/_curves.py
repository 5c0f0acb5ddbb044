"""Training curves: loss, train/test error against step, runs overlaid, thin train, bold test."""

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradscope.figures._common import as_run_list, run_colour, run_label
from gradscope.store import block_means

TRAIN_WIDTH = 1.0  # line width of training curves (thin, as in He et al. 2016, Fig. 6)
TEST_WIDTH = 3.0  # line width of test curves (bold)


def training_curves(runs, max_points: int = 2000) -> go.Figure:
    """Train loss (left) and train/test error (right) against step, one colour per run.

    Each series is block-averaged down to at most `max_points` points. A run without logged
    metrics adds an annotation naming it instead of lines; it is not an error.
    """
    runs = as_run_list(runs)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "error"))
    missing = []
    for position, run in enumerate(runs):
        metrics = run.metrics
        label = run_label(run)
        colour = run_colour(position)
        series = [
            ("loss", 1, TRAIN_WIDTH, "train loss"),
            ("train_error", 2, TRAIN_WIDTH, "train error"),
            ("test_error", 2, TEST_WIDTH, "test error"),
        ]
        drawn = 0
        for column, col, width, what in series:
            if column not in metrics.columns:
                continue
            values = metrics[column].dropna()
            if values.empty:
                continue
            steps, means = _block_means(values.index.to_numpy(), values.to_numpy(), max_points)
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=means,
                    mode="lines",
                    name=f"{label} {what}",
                    legendgroup=label,
                    line={"color": colour, "width": width},
                    hovertemplate=f"step %{{x}}<br>{what} = %{{y:.4g}}<extra>{label}</extra>",
                ),
                row=1,
                col=col,
            )
            drawn += 1
        if not drawn:
            missing.append(label)
    if missing:
        fig.add_annotation(
            text=f"no training metrics logged in: {', '.join(missing)}",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
            font={"size": 14},
        )
    for col in (1, 2):
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="error", row=1, col=2)
    fig.update_layout(
        title="training curves (thin: train, bold: test)",
        uirevision="curves",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _block_means(steps: np.ndarray, values: np.ndarray, max_points: int):
    """Means of consecutive blocks so at most `max_points` remain; a block's step is its first."""
    block = -(-len(values) // max(int(max_points), 1))
    if block <= 1:
        return steps, values
    return steps[::block], block_means(values, block)
