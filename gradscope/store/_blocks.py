"""Means of consecutive blocks of rows, ignoring NaN: how long series are drawn in fewer points."""

import numpy as np


def block_means(values: np.ndarray, block: int) -> np.ndarray:
    """Means over axis 0 of consecutive `block`-row blocks of `values` ([rows] or [rows, ...]);
    the last block may be shorter. NaN entries are left out of a mean; a block of only NaN
    gives NaN. float32 in, float32 out (ample for plotting); other dtypes give float64."""
    values = np.asarray(values)
    if values.dtype != np.float32:
        values = values.astype(np.float64)
    n_full = len(values) // block
    parts = [_nanmean(values[: n_full * block].reshape(n_full, block, *values.shape[1:]))]
    if n_full * block < len(values):
        parts.append(_nanmean(values[n_full * block :][None]))
    return np.concatenate(parts)


def _nanmean(blocks: np.ndarray) -> np.ndarray:
    """Mean over axis 1 of [blocks, rows, ...], ignoring NaN; all-NaN gives NaN."""
    is_nan = np.isnan(blocks)
    counts = blocks.shape[1]
    if is_nan.any():  # the common case has no NaN: skip the masked copy
        counts = blocks.shape[1] - is_nan.sum(axis=1)
        blocks = np.where(is_nan, blocks.dtype.type(0), blocks)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (blocks.sum(axis=1) / counts).astype(blocks.dtype, copy=False)  # 0/0 -> NaN
