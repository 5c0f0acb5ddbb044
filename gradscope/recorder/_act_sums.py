"""Raw per-call sums of watched outputs (act_*) and of their gradients (act_grad_norm)."""

from __future__ import annotations

import numpy as np
import torch

from gradscope.recorder import _stats as S

INITIAL_HOST_ROWS = 256


class HostRows:
    """A host table [rows, width], grown by doubling and reused from record to record.

    Hooks fill it row by row, so no per-call object lives from a hook to the step's end, in
    between the activations on the heap.
    """

    def __init__(self, width: int, dtype=np.float32):
        self.table = np.zeros((INITIAL_HOST_ROWS, width), dtype=dtype)
        self.used = 0

    def next_row(self) -> int:
        row = self.used
        if row == len(self.table):
            grown = np.zeros((2 * len(self.table), self.table.shape[1]), dtype=self.table.dtype)
            grown[:row] = self.table
            self.table = grown
        self.used += 1
        return row

    def column(self, j: int) -> np.ndarray:
        """Column `j` of the used rows: a view, valid until the table is next written."""
        return self.table[: self.used, j]

    def values(self) -> torch.Tensor:
        """A copy of the used rows as a tensor: the table itself is reused."""
        return torch.from_numpy(self.table[: self.used].copy())

    def drop_first(self, count: int) -> None:
        """Forget the first `count` used rows; the rest move up, in order."""
        kept = self.used - count
        self.table[:kept] = self.table[count : self.used]
        self.used = kept


def _fused_kernels():
    """The numba kernels, imported on first use (they compile or load from cache once)."""
    from gradscope.recorder import _cpu_kernels

    return _cpu_kernels


def _fused(x: torch.Tensor) -> bool:
    """Whether the one-pass CPU kernels take `x`: a CPU tensor with an exact float32 count."""
    return x.device.type == "cpu" and 0 < x.numel() < S.EXACT_FLOAT32_COUNT


class ActivationSums:
    """Per call: [total, sum of squares, max |x|, nonzeros], the element count and the layer.

    On CPU, one fused numba pass over the output computes the four and writes them straight into
    a reused host table, so no tensor is made per call. Other devices (and outputs past the
    kernel's exact count) use `stats.tensor_sums`. Rows are merged per layer once per record.

    `backpropagated` counts the leading calls that a backward pass has since reached: when the
    gradients are zeroed, those calls' gradients are gone, so their rows go too
    (`drop_backpropagated`), while calls whose backward is still to come stay.
    """

    def __init__(self, batch_sample: int | None):
        self.batch_sample = batch_sample
        self._host = HostRows(S.ACT_SUMS_SIZE)  # row i: call i's sums (CPU kernel calls)
        self._calls = HostRows(2, np.int64)  # row i: call i's element count and layer
        self._torch_rows: list = []  # (call, four 0-d tensors) for calls on the torch path
        self._scratch: dict = {}
        self._kernels = None
        self.backpropagated = 0  # leading calls whose forward pass a backward has reached

    def __len__(self) -> int:
        return self._calls.used

    @property
    def counts(self) -> np.ndarray:
        """Each call's element count (a view of a reused table)."""
        return self._calls.column(0)

    @property
    def layers(self) -> np.ndarray:
        """Each call's layer position (a view of a reused table)."""
        return self._calls.column(1)

    def add(self, tensors: list[torch.Tensor], position: int) -> None:
        x = S.flat_sample(tensors, self.batch_sample)
        call = self._calls.next_row()
        self._calls.table[call] = (x.numel(), position)
        row = self._host.next_row()
        if _fused(x):
            if self._kernels is None:
                self._kernels = _fused_kernels()
            self._kernels.sums_into(x.numpy(), self._host.table[row])
        else:
            self._torch_rows.append((call, S.tensor_sums(x, self._scratch)))

    def per_call(self, device) -> torch.Tensor:
        """All calls' sums as one float32 tensor [calls, 4] on `device`, in call order."""
        if not self._torch_rows:  # all calls on CPU: the host table holds every row
            return self._host.values().to(device)
        rows = torch.stack([torch.stack(sums).to(device) for _, sums in self._torch_rows])
        if len(self._torch_rows) == len(self):
            return rows
        table = self._host.values().to(device)
        table[[call for call, _ in self._torch_rows]] = rows
        return table

    def mark_backpropagated(self) -> None:
        """A backward pass is running: every call so far has had (or is having) its backward."""
        self.backpropagated = self._calls.used

    def drop_backpropagated(self) -> None:
        """Forget the calls a backward pass has reached (their gradients are being zeroed)."""
        count = self.backpropagated
        if count:
            self._host.drop_first(count)
            self._calls.drop_first(count)
            self._torch_rows = [
                (call - count, sums) for call, sums in self._torch_rows if call >= count
            ]
        self.backpropagated = 0

    def clear(self) -> None:
        self._host.used = self._calls.used = 0
        self._torch_rows = []
        self.backpropagated = 0


class OutputGradSums:
    """Per output gradient: its sum of squares, in a reused float32 buffer, and the layer.

    One torch.dot each, on every device, written with `out=` into a buffer on the gradient's
    device that lives from record to record, and the layer into a reused host table: nothing
    made in the backward pass outlives its hook (see `HostRows`). A numba pass took as long in
    the hook as torch.dot but made the rest of a ResNet-1202 backward slower.
    """

    def __init__(self):
        self._layers: dict[torch.device, HostRows] = {}  # per device: the layer of each row
        self._buffers: dict[torch.device, torch.Tensor] = {}  # per device: rows of sums

    def __len__(self) -> int:
        return sum(rows.used for rows in self._layers.values())

    @property
    def layers(self) -> np.ndarray:
        """The layer of each gradient, in the order of `per_grad`."""
        columns = [rows.column(0) for rows in self._layers.values()]
        if len(columns) == 1:
            return columns[0]
        return np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)

    def add(self, grad: torch.Tensor, position: int) -> None:
        g = grad.detach().reshape(-1)
        if g.dtype != torch.float32:
            g = g.float()
        layers = self._layers.get(g.device)
        if layers is None:
            layers = self._layers[g.device] = HostRows(1, np.int64)
        row = layers.next_row()
        layers.table[row, 0] = position
        torch.dot(g, g, out=self._buffer(g.device, row + 1)[row])

    def per_grad(self, device) -> torch.Tensor:
        """All gradients' sums of squares as one float32 tensor [grads] on `device`."""
        parts = [
            self._buffers[where][: rows.used].to(device)
            for where, rows in self._layers.items()
            if rows.used
        ]
        if not parts:
            return torch.zeros(0, device=device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def clear(self) -> None:
        for rows in self._layers.values():
            rows.used = 0

    def _buffer(self, device: torch.device, rows: int) -> torch.Tensor:
        """The device's buffer with at least `rows` rows, grown by doubling (rows kept)."""
        buffer = self._buffers.get(device)
        if buffer is None or len(buffer) < rows:
            size = max(rows, INITIAL_HOST_ROWS, 0 if buffer is None else 2 * len(buffer))
            grown = torch.zeros(size, device=device)
            if buffer is not None:
                grown[: len(buffer)] = buffer
            buffer = self._buffers[device] = grown
        return buffer
