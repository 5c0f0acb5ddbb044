"""A layer's output units (channels or features) and their per-record flags, merged per layer.

act_pos_frac and act_grad_zero_frac are shares of units: a unit is a channel of a conv-like
output (dim 1) or a feature of a linear-like one (the last dim). Every output tensor of a call
gets one flag per unit (was it ever > 0 in the sample; was its gradient ever != 0); flags of the
same unit (same layer, same output slot, same unit count) are OR-ed over the calls of a record
(micro-batches, shared modules) and, under data parallelism, over the ranks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# Outputs whose units are along dim 1 (channels first).
CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,  # BatchNorm, SyncBatchNorm, InstanceNorm
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._LPPoolNd,
)
# Outputs whose units are along the last dim (features last), whatever their rank.
FEATURES_LAST = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def unit_axis(module: nn.Module) -> bool | None:
    """True: the module's outputs have their units along dim 1; False: along the last dim;
    None (activations, blocks, anything else): dim 1 for outputs of 4 or more dims (images,
    volumes), else the last dim."""
    if isinstance(module, CHANNELS_FIRST):
        return True
    if isinstance(module, FEATURES_LAST):
        return False
    return None


def unit_dim(shape: torch.Size, channels_first: bool | None) -> int | None:
    """The dim of an output of `shape` that holds its units; None when the whole output is
    one unit per row (0-d and 1-d outputs)."""
    if len(shape) < 2:
        return None
    first = channels_first if channels_first is not None else len(shape) >= 4
    return 1 if first else len(shape) - 1


def unit_shape(shape: torch.Size, channels_first: bool | None) -> tuple[int, int, int]:
    """(outer, units, inner) of an output of `shape`: its elements as [outer, units, inner] in
    logical (row-major) order."""
    d = unit_dim(shape, channels_first)
    if d is None:
        return (math.prod(shape), 1, 1)
    return (math.prod(shape[:d]), shape[d], math.prod(shape[d + 1 :]))


def reduced_dims(shape: torch.Size, channels_first: bool | None) -> tuple[int, ...]:
    """The dims a per-unit reduction of an output of `shape` reduces: all but the unit dim
    (() when the whole output is one unit)."""
    d = unit_dim(shape, channels_first)
    return () if d is None else tuple(i for i in range(len(shape)) if i != d)


def host_units(t: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """A CPU tensor as a float32 numpy array [outer, units, inner]: a view when its dtype and
    strides allow (float32, contiguous or channels-last), else a copy."""
    t = t.detach() if t.requires_grad else t
    if t.dtype is not torch.float32:
        t = t.float()
    return t.numpy().reshape(shape)


class HostFlags:
    """A flat host buffer of per-unit values (float32 flags, or float64 sums), reserved range
    by range and reused from record to record (grown by doubling); the CPU kernels write into
    its ranges."""

    def __init__(self, dtype=np.float32):
        self.array = np.zeros(1024, dtype=dtype)
        self.used = 0

    def reserve(self, count: int) -> int:
        """The offset of `count` new flags (valid until `clear`)."""
        offset = self.used
        if offset + count > len(self.array):
            grown = np.zeros(max(2 * len(self.array), offset + count), dtype=self.array.dtype)
            grown[:offset] = self.array[:offset]
            self.array = grown
        self.used += count
        return offset

    def clear(self) -> None:
        self.used = 0


class UnitEntries:
    """The (layer, slot, units) of each flag row of a record, where its flags are, and how
    many elements each of its units has (outer x inner of the sampled output).

    A row's flags sit either in a flat float32 buffer (`offset` >= 0: written by the CPU
    kernels or a per-unit norm) or come from elsewhere (the device path's sample groups, by
    call). Merged per unit, and counted per layer, once per record
    (`_stats.unit_layer_sums`).
    """

    def __init__(self):
        # call, layer, slot, units, offset, elements per unit
        self.rows = np.zeros((256, 6), dtype=np.int64)
        self.used = 0

    def add(self, call: int, layer: int, slot: int, units: int, offset: int, elements: int) -> None:
        if self.used == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
        self.rows[self.used] = (call, layer, slot, units, offset, elements)
        self.used += 1

    def view(self) -> np.ndarray:
        """The used rows [n, 6] (a view of a reused table)."""
        return self.rows[: self.used]

    def clear(self) -> None:
        self.used = 0


class UnitLayout:
    """The distinct units of a record, in canonical order (layer, slot, unit count, unit): the
    same on every rank that saw the same layers. `keys` [K, 3] (layer, slot, units), `start`
    [K] the first position of each key's units, `layer_of` [U] the layer of each unit."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        sizes = keys[:, 2] if len(keys) else np.zeros(0, dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.size = int(sizes.sum())
        self.layer_of = np.repeat(keys[:, 0], sizes) if len(keys) else np.zeros(0, np.int64)
        # each unit's index among its output's units (its channel or feature)
        self.unit_index = (
            np.arange(self.size, dtype=np.int64) - np.repeat(self.start, sizes)
            if len(keys)
            else np.zeros(0, np.int64)
        )

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """For entries [n, 5 or more] (call, layer, slot, units, offset, ...): the canonical
        position of each of their units, [sum of units] in entry order."""
        index = {tuple(k): i for i, k in enumerate(self.keys.tolist())}
        starts = [self.start[index[(r[1], r[2], r[3])]] for r in rows.tolist()]
        return _ranges(np.asarray(starts, dtype=np.int64), rows[:, 3])

    def units_per_layer(self, n_layers: int) -> np.ndarray:
        """The number of units of each layer [L] (float64)."""
        return np.bincount(self.layer_of, minlength=n_layers).astype(np.float64)


def layout_of(rows: np.ndarray) -> UnitLayout:
    """The canonical layout of the distinct (layer, slot, units) keys of entries [n, 5]."""
    keys = np.unique(rows[:, 1:4], axis=0) if len(rows) else np.zeros((0, 3), dtype=np.int64)
    return UnitLayout(keys)


def buffer_positions(rows: np.ndarray) -> np.ndarray:
    """For entries with flags in a flat buffer: each unit's position there, in entry order."""
    return _ranges(rows[:, 4], rows[:, 3])


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + n) for s, n in zip(starts, sizes)), without a Python loop."""
    if not len(sizes):
        return np.zeros(0, dtype=np.int64)
    total = int(sizes.sum())
    steps = np.ones(total, dtype=np.int64)
    ends = np.cumsum(sizes)[:-1]
    steps[0] = starts[0]
    steps[ends] = starts[1:] - (starts[:-1] + sizes[:-1] - 1)
    return np.cumsum(steps)


def placement(local: UnitLayout, agreed: UnitLayout, n_layers: int):
    """Where this rank's units (in `local` order) sit in the ranks' `agreed` layout: (the
    local units found there, their positions there, per layer [L] 1.0 where this rank has
    units the agreed layout lacks)."""
    index = {tuple(k): i for i, k in enumerate(agreed.keys.tolist())}
    found = np.array([tuple(k) in index for k in local.keys.tolist()], dtype=bool)
    missing = np.zeros(n_layers)
    missing[local.keys[~found, 0]] = 1.0
    keys = local.keys[found]
    entries = np.column_stack([np.zeros(len(keys), np.int64), keys, np.zeros(len(keys), np.int64)])
    kept = np.repeat(found, local.keys[:, 2]) if len(local.keys) else np.zeros(0, dtype=bool)
    return np.flatnonzero(kept), agreed.positions(entries), missing
