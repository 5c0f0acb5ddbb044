"""Training curves: train and test loss, train and test error in %, runs overlaid, smoothed."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradscope.errors import UsageError
from gradscope.figures._colours import run_colours
from gradscope.figures._common import as_run_list, run_label
from gradscope.figures._words import log_axis
from gradscope.store import block_means

DEFAULT_SMOOTHING = 0.6  # TensorBoard's default slider position
TRAIN_WIDTH = 1.5  # smoothed training curves: thin, as in He et al. 2016, Fig. 6
TEST_WIDTH = 3.0  # test curves: bold
RAW_OPACITY = 0.25  # the unsmoothed training curve, drawn faintly behind the smoothed one
# (subplot column, what, metric names tried in order, is an error rate, is a test metric)
SERIES = (
    (1, "train loss", ("loss", "train_loss"), False, False),
    (1, "test loss", ("test_loss",), False, True),
    (2, "train error", ("error", "train_error"), True, False),
    (2, "test error", ("test_error",), True, True),
)


def training_curves(
    runs, max_points: int = 2000, smoothing: float = DEFAULT_SMOOTHING, colours=None
) -> go.Figure:
    """Loss (left) and error in % (right) against step: train thin, test bold; one colour and
    one legend entry per run.

    Training series are smoothed by an exponential moving average with weight `smoothing`
    in [0, 1) (TensorBoard's slider: 0 is off; debiased, so the start is not pulled to 0),
    the raw series drawn faintly behind. Error metrics logged as fractions (the trainer's
    `error` and `test_error`) are shown in %; a series with values above 1 is taken to be
    in % already. Each series is block-averaged down to at most `max_points` points. A run
    without logged metrics is named in a note instead of lines; it is not an error.
    """
    runs = as_run_list(runs)
    if not 0 <= smoothing < 1:
        raise UsageError(f"smoothing must be in [0, 1), not {smoothing!r}")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Error (%)"))
    missing, loss_values = [], []
    for run, colour in zip(runs, run_colours(runs, colours), strict=True):
        label = run_label(run)
        drawn = 0
        for col, what, names, is_error, is_test in SERIES:
            values = _series(run.metrics, names)
            if values is None:
                continue
            if is_error and not (values > 1).any():
                values = values * 100.0
            if col == 1:
                loss_values.append(values.to_numpy())
            line = {"colour": colour, "label": label, "max_points": max_points}
            hover = f"step %{{x}}<br>{what} = %{{y:.4g}}<extra>{label}</extra>"
            if not is_test and smoothing:
                fig.add_trace(_line(values, **line, opacity=RAW_OPACITY), row=1, col=col)
                values = values.ewm(alpha=1.0 - smoothing, adjust=True).mean()
            width = TEST_WIDTH if is_test else TRAIN_WIDTH
            trace = _line(values, **line, width=width, hover=hover, legend=drawn == 0)
            fig.add_trace(trace, row=1, col=col)
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
    loss_axis = log_axis(np.concatenate(loss_values or [[]]))
    fig.update_yaxes(title_text="loss (log scale)", row=1, col=1, **loss_axis)
    fig.update_yaxes(title_text="error (%)", row=1, col=2)
    smoothed = f"train smoothed ({smoothing:g}), faint: raw" if smoothing else "train"
    fig.update_layout(
        title={"text": f"Training curves (thin: {smoothed}; bold: test)"},
        uirevision="curves",
        legend={"title": {"text": "run"}},
    )
    return fig


def _series(metrics: pd.DataFrame, names) -> pd.Series | None:
    """The first of the metric `names` logged with at least one value, without NaN rows."""
    for name in names:
        if name in metrics.columns:
            values = metrics[name].dropna()
            if not values.empty:
                return values.astype(np.float64)
    return None


def _line(
    values: pd.Series,
    colour: str,
    label: str,
    max_points: int,
    width: float = TRAIN_WIDTH,
    opacity: float = 1.0,
    hover: str | None = None,
    legend: bool = False,
) -> go.Scatter:
    """One series of one run (block-averaged to `max_points`); no hover without `hover`."""
    steps, means = _block_means(values.index.to_numpy(), values.to_numpy(), max_points)
    return go.Scatter(
        x=steps,
        y=means,
        mode="lines+markers" if len(means) < 30 else "lines",
        name=label,
        legendgroup=label,
        showlegend=legend,
        opacity=opacity,
        line={"color": colour, "width": width},
        marker={"size": 5},
        hovertemplate=hover,
        hoverinfo=None if hover else "skip",
    )


def _block_means(steps: np.ndarray, values: np.ndarray, max_points: int):
    """Means of consecutive blocks so at most `max_points` remain; a block's step is its first."""
    block = -(-len(values) // max(int(max_points), 1))
    if block <= 1:
        return steps, values
    return steps[::block], block_means(values, block)
