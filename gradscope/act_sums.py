"""Raw sums of each watched module call's outputs in one record, for the act_* statistics."""

from __future__ import annotations

import numpy as np
import torch

from gradscope import stats as S

INITIAL_HOST_ROWS = 256


class ActivationSums:
    """Per call: [total, sum of squares, min, max, nonzeros], the element count and the layer.

    On CPU, min/max take one torch kernel and the other three one fused numba pass written
    straight into a reused host buffer: two passes over the output instead of five, and no
    tensor made per call. Other devices (and outputs past the fused kernel's exact count) use
    `stats.tensor_sums`. Rows are merged into per-layer statistics once per record.
    """

    def __init__(self, batch_sample: int | None):
        self.batch_sample = batch_sample
        self.counts: list[int] = []
        self.layers: list[int] = []
        self._rows: list = []  # per call: a row index of _host, or five 0-d tensors
        self._extremes: list[torch.Tensor] = []  # min, max of host row r at 2r, 2r+1
        self._host = np.zeros((INITIAL_HOST_ROWS, 3), dtype=np.float32)  # total, sumsq, nonzeros
        self._host_rows = 0
        self._scratch: dict = {}
        self._fused = None  # the numba kernel, imported on first use (it compiles once)

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, tensors: list[torch.Tensor], position: int) -> None:
        x = S.flat_sample(tensors, self.batch_sample)
        n = x.numel()
        if x.device.type == "cpu" and 0 < n < S.EXACT_FLOAT32_COUNT:
            self._extremes.extend(torch.aminmax(x))
            row = self._next_host_row()
            self._fused_kernel()(x.numpy(), self._host[row])
            self._rows.append(row)
        else:
            self._rows.append(S.tensor_sums(x, self._scratch))
        self.counts.append(n)
        self.layers.append(position)

    def per_call(self, device) -> torch.Tensor:
        """All calls' sums as one float32 tensor [calls, 5] on `device`."""
        n_host = self._host_rows
        if n_host == len(self._rows):  # all calls on CPU: no per-call tensors to stack
            host = torch.from_numpy(self._host[:n_host]).to(device)
            extremes = torch.stack(self._extremes).view(-1, 2).to(device)
            return torch.cat([host[:, :2], extremes, host[:, 2:]], dim=1)
        rows = []
        for row in self._rows:
            if isinstance(row, int):
                total, sumsq, nonzeros = torch.from_numpy(self._host[row].copy())
                lo, hi = self._extremes[2 * row : 2 * row + 2]
                row = [total, sumsq, lo, hi, nonzeros]
            rows.append(torch.stack([v.to(device) for v in row]))
        return torch.stack(rows)

    def clear(self) -> None:
        self.counts, self.layers, self._rows, self._extremes = [], [], [], []
        self._host_rows = 0

    def _next_host_row(self) -> int:
        row = self._host_rows
        if row == len(self._host):
            grown = np.zeros((2 * len(self._host), 3), dtype=np.float32)
            grown[:row] = self._host
            self._host = grown
        self._host_rows += 1
        return row

    def _fused_kernel(self):
        if self._fused is None:
            from gradscope.cpu_moments import sums_into

            self._fused = sums_into
        return self._fused
