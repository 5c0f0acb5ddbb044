"""Raw per-call sums of watched outputs (act_*) and of their gradients (act_grad_norm)."""

from __future__ import annotations

import numpy as np
import torch

from gradscope.recorder import _stats as S
from gradscope.recorder._kernels import KernelChoice, SampleGroup, grad_norm_into

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


def _numba_kernels():
    """The numba kernels, imported on first use (they compile or load from cache once)."""
    from gradscope.recorder import _cpu_kernels

    return _cpu_kernels


class ActivationSums:
    """Per call of a watched module: [total, sum of squares, max |x|, nonzeros] of its outputs
    (first `batch_sample` rows), the element count and the layer.

    CPU tensors (kernel mode auto): one fused numba pass over the output writes the four straight
    into a reused host table. Elsewhere (and with GRADSCOPE_KERNELS=torch everywhere) the device
    path: each output's sampled rows are copied (one op) into a reused buffer of outputs of
    its size (`_kernels.SampleGroup`), and each group is reduced in a few batched ops when the
    record is packed (or when its buffer is full). Rows are merged per layer once per record.

    `backpropagated` counts the leading calls that a backward pass has since reached: when the
    gradients are zeroed, those calls' gradients are gone, so their rows go too
    (`drop_backpropagated`), while calls whose backward is still to come stay.
    """

    def __init__(self, batch_sample: int | None, kernels: KernelChoice):
        self.batch_sample = batch_sample
        self._numba_on_cpu = kernels.numba_on_cpu
        self._host = HostRows(S.ACT_SUMS_SIZE)  # the numba rows, in call order
        # row i: call i's element count, layer, and its row in the host table (-1: a device
        # row, in a sample group or a reduced chunk)
        self._calls = HostRows(3, np.int64)
        self._first_call = 0  # the number of calls dropped since the record began
        self._groups: dict[tuple, SampleGroup] = {}  # (device, numel) -> its sample group
        self._chunks: list[tuple[torch.Tensor, list[int]]] = []  # reduced rows, their calls
        self._numba = None
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
        """The sums of one call's floating outputs (`tensors`, all of one module call)."""
        if self._numba_on_cpu and tensors[0].is_cpu:
            x = S.host_sample(tensors, self.batch_sample)
            if 0 < x.shape[0] < S.EXACT_FLOAT32_COUNT:  # the kernel's count is exact below
                if self._numba is None:
                    self._numba = _numba_kernels()
                row = self._host.next_row()
                self._numba.sums_into(x, self._host.table[row])
                call = self._calls.next_row()  # first: it may grow the table
                self._calls.table[call] = (x.shape[0], position, row)
                return
        for t in tensors:  # the device path: one row per output tensor (merged per layer)
            t = t.detach()
            if self.batch_sample is not None and t.dim() > 0 and t.shape[0] > self.batch_sample:
                t = t[: self.batch_sample]
            call = self._calls.next_row()
            self._calls.table[call] = (t.numel(), position, -1)
            if t.numel() == 0:  # no rows: every sum is 0 (and so is the count)
                zeros = t.new_zeros((1, S.ACT_SUMS_SIZE), dtype=torch.float64)
                self._chunks.append((zeros, [self._first_call + call]))
                continue
            group = self._group(t)
            if group.full:
                calls = group.calls
                self._chunks.append((group.reduce(), calls))
            group.add(t, self._first_call + call)

    def per_call(self, device) -> torch.Tensor:
        """All calls' sums as one tensor [calls, 4] on `device` (float32 from the numba
        table, float64 from the device path), in call order."""
        host_rows = self._calls.column(2)
        if (host_rows >= 0).all():  # all on CPU through numba: the host table holds every row
            return self._host.values().to(device)
        self._reduce_groups()
        parts = [rows.to(device) for rows, _ in self._chunks]
        reduced = parts[0] if len(parts) == 1 else torch.cat(parts)
        calls = np.concatenate([np.asarray(c, dtype=np.int64) for _, c in self._chunks])
        keep = calls >= self._first_call  # rows of dropped calls are left out
        order = np.argsort(calls[keep] - self._first_call, kind="stable")
        if (host_rows < 0).all():
            positions = np.flatnonzero(keep)[order]
            if keep.all() and (positions == np.arange(len(positions))).all():
                return reduced
            return reduced[S.host_to_device(positions, torch.long, device)]
        table = self._host.values().to(device, torch.float64)  # mixed: numba rows, then ...
        full = torch.zeros((len(self), S.ACT_SUMS_SIZE), dtype=torch.float64, device=device)
        numba = np.flatnonzero(host_rows >= 0)
        full[S.host_to_device(numba, torch.long, device)] = table[: len(numba)]
        device_calls = np.flatnonzero(host_rows < 0)
        positions = np.flatnonzero(keep)[order]
        full[S.host_to_device(device_calls, torch.long, device)] = reduced[
            S.host_to_device(positions, torch.long, device)
        ]
        return full

    def mark_backpropagated(self) -> None:
        """A backward pass is running: every call so far has had (or is having) its backward."""
        self.backpropagated = self._calls.used

    def drop_backpropagated(self) -> None:
        """Forget the calls a backward pass has reached (their gradients are being zeroed)."""
        count = self.backpropagated
        if count:
            host_rows = self._calls.column(2)[:count]
            self._host.drop_first(int((host_rows >= 0).sum()))
            self._calls.drop_first(count)
            kept = self._calls.table[: self._calls.used, 2]
            kept[kept >= 0] = np.arange(int((kept >= 0).sum()))
            self._first_call += count  # device rows of those calls are skipped when packed
        self.backpropagated = 0

    def clear(self) -> None:
        self._host.used = self._calls.used = 0
        self._first_call = 0
        for group in self._groups.values():
            group.calls = []
        self._chunks = []
        self.backpropagated = 0

    def _group(self, t: torch.Tensor) -> SampleGroup:
        key = (t.device, t.numel())
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = SampleGroup(t.device, t.numel())
        return group

    def _reduce_groups(self) -> None:
        for group in self._groups.values():
            if group.calls:
                calls = group.calls
                self._chunks.append((group.reduce(), calls))


class OutputGradSums:
    """Per output gradient: its sum of squares, in a reused float32 buffer, and the layer.

    One reduction each, written with `out=` into a buffer on the gradient's device that lives
    from record to record, and the layer into a reused host table: nothing made in the backward
    pass outlives its hook (see `HostRows`). On CPU (kernel mode auto) a torch.dot, which runs
    on every thread (a numba pass took as long in the hook but made the rest of a ResNet-1202
    backward slower); on the device path a vector norm, which takes any layout and dtype
    without a copy, squared once per record.
    """

    def __init__(self, kernels: KernelChoice):
        self._kernels = kernels
        self._dot_on_cpu = kernels.numba_on_cpu
        self._layers: dict[torch.device, HostRows] = {}  # per device: the layer of each row
        self._buffers: dict[torch.device, torch.Tensor] = {}  # per device: rows of sums
        self._slots: dict[torch.device, list[torch.Tensor]] = {}  # their rows, as 0-d views

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
        """The sum of squares of one output gradient of the layer at `position`."""
        device = grad.device
        layers = self._layers.get(device)
        if layers is None:
            layers = self._layers[device] = HostRows(1, np.int64)
        row = layers.next_row()
        layers.table[row, 0] = position
        slots = self._slots.get(device)
        if slots is None or row == len(slots):
            slots = self._grow(device, row + 1)
        if grad.requires_grad:  # only under create_graph
            grad = grad.detach()
        if self._dot_on_cpu and grad.is_cpu:
            g = S.flat_in_memory_order(grad)
            if g.dtype is not torch.float32:
                g = g.float()
            torch.dot(g, g, out=slots[row])
        else:
            grad_norm_into(grad, slots[row])

    def per_grad(self, device) -> torch.Tensor:
        """All gradients' sums of squares as one float32 tensor [grads] on `device`."""
        parts = []
        for where, rows in self._layers.items():
            if rows.used:
                part = self._buffers[where][: rows.used]
                if not self._kernels.numba_for(where):
                    part = part.square()  # the device path stores norms
                parts.append(part.to(device))
        if not parts:
            return torch.zeros(0, device=device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def clear(self) -> None:
        for rows in self._layers.values():
            rows.used = 0

    def _grow(self, device: torch.device, rows: int) -> list[torch.Tensor]:
        """The device's buffer grown to at least `rows` rows by doubling (rows kept), and its
        rows as 0-d views, made once (indexing a tensor in a hook costs more than the sum)."""
        buffer = self._buffers.get(device)
        size = max(rows, INITIAL_HOST_ROWS, 0 if buffer is None else 2 * len(buffer))
        grown = torch.zeros(size, device=device)
        if buffer is not None:
            grown[: len(buffer)] = buffer
        self._buffers[device] = grown
        slots = self._slots[device] = list(grown.unbind())
        return slots
