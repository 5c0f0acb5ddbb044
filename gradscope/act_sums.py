"""Raw per-call sums of watched outputs (act_*) and of their gradients (act_grad_norm)."""

from __future__ import annotations

import numpy as np
import torch

from gradscope import stats as S

INITIAL_HOST_ROWS = 256


class HostRows:
    """A float32 host table [rows, width], grown by doubling and reused from record to record."""

    def __init__(self, width: int):
        self.table = np.zeros((INITIAL_HOST_ROWS, width), dtype=np.float32)
        self.used = 0

    def next_row(self) -> int:
        row = self.used
        if row == len(self.table):
            grown = np.zeros((2 * len(self.table), self.table.shape[1]), dtype=np.float32)
            grown[:row] = self.table
            self.table = grown
        self.used += 1
        return row

    def values(self) -> torch.Tensor:
        """A copy of the used rows as a tensor: the table itself is reused."""
        return torch.from_numpy(self.table[: self.used].copy())


def _fused_kernels():
    """The numba kernels, imported on first use (they compile or load from cache once)."""
    from gradscope import cpu_moments

    return cpu_moments


def _fused(x: torch.Tensor) -> bool:
    """Whether the one-pass CPU kernels take `x`: a CPU tensor with an exact float32 count."""
    return x.device.type == "cpu" and 0 < x.numel() < S.EXACT_FLOAT32_COUNT


class ActivationSums:
    """Per call: [total, sum of squares, max |x|, nonzeros], the element count and the layer.

    On CPU, one fused numba pass over the output computes the four and writes them straight into
    a reused host table, so no tensor is made per call. Other devices (and outputs past the
    kernel's exact count) use `stats.tensor_sums`. Rows are merged per layer once per record.
    """

    def __init__(self, batch_sample: int | None):
        self.batch_sample = batch_sample
        self.counts: list[int] = []
        self.layers: list[int] = []
        self._rows: list = []  # per call: a row of _host, or four 0-d tensors
        self._host = HostRows(S.ACT_SUMS_SIZE)
        self._scratch: dict = {}
        self._kernels = None

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, tensors: list[torch.Tensor], position: int) -> None:
        x = S.flat_sample(tensors, self.batch_sample)
        if _fused(x):
            if self._kernels is None:
                self._kernels = _fused_kernels()
            row = self._host.next_row()
            self._kernels.sums_into(x.numpy(), self._host.table[row])
            self._rows.append(row)
        else:
            self._rows.append(S.tensor_sums(x, self._scratch))
        self.counts.append(x.numel())
        self.layers.append(position)

    def per_call(self, device) -> torch.Tensor:
        """All calls' sums as one float32 tensor [calls, 4] on `device`."""
        if self._host.used == len(self._rows):  # all calls on CPU: no per-call tensors to stack
            return self._host.values().to(device)
        host = self._host.values()
        rows = [host[row] if isinstance(row, int) else torch.stack(row) for row in self._rows]
        return torch.stack([row.to(device) for row in rows])

    def clear(self) -> None:
        self.counts, self.layers, self._rows = [], [], []
        self._host.used = 0


class OutputGradSums:
    """Per output gradient: its sum of squares, in a reused float32 buffer, and the layer.

    One torch.dot each, on every device, written with `out=` into a buffer on the gradient's
    device that lives from record to record. Nothing made in the backward pass outlives its
    hook: on CPU, small tensors kept from hook to step end (a 0-d result per gradient) split
    glibc's heap so that freed activation memory went back to the OS and was faulted in again,
    which made a recorded ResNet-56 step about 3% slower. (A numba pass took as long in the
    hook as torch.dot but made the rest of a ResNet-1202 backward slower.)
    """

    def __init__(self):
        self._layers: dict[torch.device, list[int]] = {}  # per device: the layer of each row
        self._buffers: dict[torch.device, torch.Tensor] = {}  # per device: rows of sums

    def __len__(self) -> int:
        return sum(len(layers) for layers in self._layers.values())

    @property
    def layers(self) -> list[int]:
        """The layer of each gradient, in the order of `per_grad`."""
        return [layer for layers in self._layers.values() for layer in layers]

    def add(self, grad: torch.Tensor, position: int) -> None:
        g = grad.detach().reshape(-1)
        if g.dtype != torch.float32:
            g = g.float()
        layers = self._layers.setdefault(g.device, [])
        row = len(layers)
        torch.dot(g, g, out=self._buffer(g.device, row + 1)[row])
        layers.append(position)

    def per_grad(self, device) -> torch.Tensor:
        """All gradients' sums of squares as one float32 tensor [grads] on `device`."""
        parts = [
            self._buffers[where][: len(layers)].to(device)
            for where, layers in self._layers.items()
            if layers
        ]
        if not parts:
            return torch.zeros(0, device=device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def clear(self) -> None:
        for layers in self._layers.values():
            layers.clear()

    def _buffer(self, device: torch.device, rows: int) -> torch.Tensor:
        """The device's buffer with at least `rows` rows, grown by doubling (rows kept)."""
        buffer = self._buffers.get(device)
        if buffer is None or len(buffer) < rows:
            grown = torch.zeros(
                max(rows, 2 * (0 if buffer is None else len(buffer)), 256), device=device
            )
            if buffer is not None:
                grown[: len(buffer)] = buffer
            buffer = self._buffers[device] = grown
        return buffer
