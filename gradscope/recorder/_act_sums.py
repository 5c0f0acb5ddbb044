"""Raw per-call sums of watched outputs (act_*) and of their gradients (act_grad_norm)."""

from __future__ import annotations

import numpy as np
import torch

from gradscope.recorder import _stats as S
from gradscope.recorder import _units as U
from gradscope.recorder._kernels import KernelChoice, SampleGroup, unit_norms_into

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
    """Per call of a watched module: [total, sum of squares, max |x|, nonzeros, shift, shifted
    power sums 1-4] of its outputs (first `batch_sample` rows, `_stats.ACT_SUMS_SIZE`), the
    element count and the layer.

    CPU tensors (kernel mode auto): one fused numba pass over the output writes them straight
    into a reused host table. Elsewhere (and with GRADSCOPE_KERNELS=torch everywhere) the device
    path: each output's sampled rows are copied (one op) into a reused buffer of outputs of
    its size (`_kernels.SampleGroup`), and each group is reduced in a few batched ops when the
    record is packed (or when its buffer is full). Rows are merged per layer once per record.

    With `unit_axes` (per layer, where its outputs' units are: `_units.unit_axis`), each
    output also gets per unit, with `positive`, a flag, 1 where the unit is > 0 in some sampled
    row (act_pos_frac): on the CPU path one early-exit pass (`_cpu_kernels.mark_units`) into a
    reused host buffer, on the device path in the sample group's kernel; with `squares`, the
    sum of squares of its sampled elements (act_outlier_channel): on the CPU path one pass
    (`_cpu_kernels.unit_sumsq_into`), on the device path in the same kernel.

    `backpropagated` counts the leading calls that a backward pass has since reached: when the
    gradients are zeroed, those calls' gradients are gone, so their rows go too
    (`drop_backpropagated`), while calls whose backward is still to come stay.
    """

    def __init__(
        self,
        batch_sample: int | None,
        kernels: KernelChoice,
        unit_axes=None,
        positive: bool = True,
        squares: bool = False,
    ):
        self.batch_sample = batch_sample
        self._numba_on_cpu = kernels.numba_on_cpu
        self._unit_axes = unit_axes  # None: nothing per unit
        self._positive = positive and unit_axes is not None
        self._squares = squares and unit_axes is not None
        self._host = HostRows(S.ACT_SUMS_SIZE)  # the numba rows, in call order
        # row i: call i's element count, layer, and its row in the host table (-1: a device
        # row, in a sample group or a reduced chunk)
        self._calls = HostRows(3, np.int64)
        self._first_call = 0  # the number of calls dropped since the record began
        self._groups: dict[tuple, SampleGroup] = {}  # (device, numel, units) -> its group
        # reduced rows [r, ACT_SUMS_SIZE], their calls, their unit flags [r, units] and their
        # units' sums of squares [r, units]
        self._chunks: list[tuple[torch.Tensor, list[int], torch.Tensor, torch.Tensor]] = []
        self._entries = U.UnitEntries()  # the unit rows: call, layer, slot, units, offset, ...
        self._flags = U.HostFlags()  # the CPU kernels' flags
        self._unit_sumsq = U.HostFlags(np.float64)  # and sums of squares (same offsets)
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
                if self._unit_axes is not None:
                    self._per_unit(tensors, position, self._first_call + call)
                return
        axis = self._unit_axes[position] if self._unit_axes is not None else None
        for slot, t in enumerate(tensors):  # the device path: a row per output tensor
            t = self._sampled(t.detach())
            units = U.unit_shape(t.shape, axis) if self._unit_axes is not None else None
            call = self._calls.next_row()
            self._calls.table[call] = (t.numel(), position, -1)
            if units is not None and units[1] > 0:
                elements = units[0] * units[2]
                self._entries.add(self._first_call + call, position, slot, units[1], -1, elements)
            if t.numel() == 0:  # no rows: every sum is 0 (and so is the count), no unit > 0
                zeros = t.new_zeros((1, S.ACT_SUMS_SIZE), dtype=torch.float64)
                flags = t.new_zeros((1, units[1] if units is not None else 1))
                self._chunks.append((zeros, [self._first_call + call], flags, flags.double()))
                continue
            group = self._group(t, units or (1, 1, t.numel()))
            if group.full:
                self._reduce(group)
            group.add(t, self._first_call + call)

    def _sampled(self, t: torch.Tensor) -> torch.Tensor:
        """The first `batch_sample` rows of an output."""
        if self.batch_sample is not None and t.dim() > 0 and t.shape[0] > self.batch_sample:
            return t[: self.batch_sample]
        return t

    def _per_unit(self, tensors: list[torch.Tensor], position: int, call: int) -> None:
        """The CPU path's per-unit values of one call: per output tensor, one early-exit pass
        for the flags, one pass for the sums of squares (at the same offset in their
        buffers: both reserve the same ranges)."""
        axis = self._unit_axes[position]
        for slot, t in enumerate(tensors):
            t = self._sampled(t)
            units = U.unit_shape(t.shape, axis)
            if units[1] == 0:
                continue
            x = U.host_units(t, units)
            offset = -1
            if self._positive:
                offset = self._flags.reserve(units[1])
                self._numba.mark_units(x, self._flags.array[offset : offset + units[1]], True)
            if self._squares:
                offset = self._unit_sumsq.reserve(units[1])
                sums = self._unit_sumsq.array[offset : offset + units[1]]
                self._numba.unit_sumsq_into(x, sums)
            self._entries.add(call, position, slot, units[1], offset, units[0] * units[2])

    def per_call(self, device) -> torch.Tensor:
        """All calls' sums as one tensor [calls, ACT_SUMS_SIZE] on `device` (float32 from the numba
        table, float64 from the device path), in call order."""
        host_rows = self._calls.column(2)
        if (host_rows >= 0).all():  # all on CPU through numba: the host table holds every row
            return self._host.values().to(device)
        self._reduce_groups()
        parts = [chunk[0].to(device) for chunk in self._chunks]
        reduced = parts[0] if len(parts) == 1 else torch.cat(parts)
        calls = np.concatenate([np.asarray(chunk[1], dtype=np.int64) for chunk in self._chunks])
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

    def unit_flags(self, on_device) -> tuple[U.UnitLayout, torch.Tensor, torch.Tensor]:
        """The record's units (canonical order), and the flags of the calls kept: values [n]
        (float32, 1.0: some sampled element was > 0) and the canonical position of each [n]
        (a unit's flags over several calls are merged when counted). `on_device(array,
        dtype)`: host arrays as cached tensors on the device of the record."""
        layout, values, positions, _ = self._unit_values(on_device, self._flags.array, 2)
        return layout, values, positions

    def unit_squares(self, on_device):
        """The record's units (canonical order, a UnitLayout), the sums of squares of the
        calls kept: values [n] (float64) and the canonical position of each [n], and each
        canonical unit's element count [units] (float64, on the host): see `unit_flags`."""
        return self._unit_values(on_device, self._unit_sumsq.array, 3)

    def _unit_values(self, on_device, host: np.ndarray, item: int):
        """Per-unit values of the calls kept, from `host` (CPU kernels' buffer) or item `item`
        of the device path's chunks: (layout, values [n], positions [n], element count of
        each canonical unit)."""
        rows = self._entries.view()
        rows = rows[rows[:, 0] >= self._first_call]  # calls dropped since are left out
        layout = U.layout_of(rows)
        values, positions, picked = [], [], []
        host_rows = rows[rows[:, 4] >= 0]
        if len(host_rows):
            found = torch.from_numpy(host[U.buffer_positions(host_rows)])
            values.append(found.to(on_device.device))
            positions.append(layout.positions(host_rows))
            picked.append(host_rows)
        by_call = {row[0]: row for row in rows[rows[:, 4] < 0].tolist()}
        if by_call:
            self._reduce_groups()
        for chunk in self._chunks if by_call else ():
            calls, per_unit = chunk[1], chunk[item]
            kept = [i for i, call in enumerate(calls) if call in by_call]
            if kept:
                entries = np.array([by_call[calls[i]] for i in kept])
                positions.append(layout.positions(entries))
                picked.append(entries)
                if len(kept) < len(calls):
                    per_unit = per_unit[S.host_to_device(kept, torch.long, per_unit.device)]
                values.append(per_unit.reshape(-1).to(on_device.device))
        if not values:
            empty = torch.zeros(0, device=on_device.device)
            return layout, empty, on_device([], torch.long), np.zeros(layout.size)
        joined = values[0] if len(values) == 1 else torch.cat(values)
        at = np.concatenate(positions)
        entries = np.concatenate(picked)
        elements = np.bincount(
            at, weights=np.repeat(entries[:, 5], entries[:, 3]), minlength=layout.size
        )
        return layout, joined, on_device(at, torch.long), elements

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
        self._entries.clear()
        self._flags.clear()
        self._unit_sumsq.clear()
        self.backpropagated = 0

    def _group(self, t: torch.Tensor, units: tuple[int, int, int]) -> SampleGroup:
        key = (t.device, t.numel(), units)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = SampleGroup(t.device, t.numel(), units)
        return group

    def _reduce_groups(self) -> None:
        for group in self._groups.values():
            if group.calls:
                self._reduce(group)

    def _reduce(self, group: SampleGroup) -> None:
        calls = group.calls
        sums, positive, unit_sumsq = group.reduce()
        self._chunks.append((sums, calls, positive, unit_sumsq))


class OutputGradSums:
    """Per output gradient: its sum of squares, the layer, and (with `unit_axes`) a flag per
    unit, 1 where the unit's gradient is nonzero in some row (act_grad_zero_frac).

    One reduction each, written with `out=` into a buffer on the gradient's device that lives
    from record to record, and the layer into a reused host table: nothing made in the backward
    pass outlives its hook (see `HostRows`). On CPU (kernel mode auto) a torch.dot, which runs
    on every thread (a numba pass took as long in the hook but made the rest of a ResNet-1202
    backward slower), and the unit flags from one early-exit pass (`_cpu_kernels.mark_units`:
    a read or two per unit that has a nonzero gradient). On the device path one per-unit vector
    norm, which takes any layout and dtype without a copy, into a reused buffer of unit norms:
    once per record they are squared and summed per gradient, and tested for zeros.
    """

    def __init__(self, kernels: KernelChoice, unit_axes=None):
        self._kernels = kernels
        self._dot_on_cpu = kernels.numba_on_cpu
        self._unit_axes = unit_axes  # None: no unit flags
        # per device, a row per gradient: layer, output slot, units, offset of its flags (CPU
        # kernels) or of its unit norms (device path)
        self._rows: dict[torch.device, HostRows] = {}
        self._buffers: dict[torch.device, torch.Tensor] = {}  # CPU kernels: sums per row
        self._slots: dict[torch.device, list[torch.Tensor]] = {}  # their rows, as 0-d views
        self._flags = U.HostFlags()  # CPU kernels: the unit flags
        self._norms: dict[torch.device, torch.Tensor] = {}  # device path: unit norms
        self._norms_used: dict[torch.device, int] = {}
        # device path, per row: (shape, offset) -> (dims, view) of its last use
        self._views: dict[torch.device, list] = {}
        self._numba = None

    def __len__(self) -> int:
        return sum(rows.used for rows in self._rows.values())

    @property
    def layers(self) -> np.ndarray:
        """The layer of each gradient, device by device in the order they arrived."""
        columns = [rows.column(0) for rows in self._rows.values()]
        if len(columns) == 1:
            return columns[0]
        return np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)

    def add(self, grad: torch.Tensor, position: int, slot: int = 0) -> None:
        """The sum of squares of one output gradient (output `slot` of the call) of the
        layer at `position`, and its unit flags."""
        device = grad.device
        rows = self._rows.get(device)
        if rows is None:
            rows = self._rows[device] = HostRows(4, np.int64)
        row = rows.next_row()
        if grad.requires_grad:  # only under create_graph
            grad = grad.detach()
        axis = self._unit_axes[position] if self._unit_axes is not None else None
        if self._dot_on_cpu and grad.is_cpu:
            slots = self._slots.get(device)
            if slots is None or row == len(slots):
                slots = self._grow(device, row + 1)
            g = S.flat_in_memory_order(grad)
            if g.dtype is not torch.float32:
                g = g.float()
            torch.dot(g, g, out=slots[row])
            units, offset = 0, -1
            if self._unit_axes is not None:
                shape = U.unit_shape(grad.shape, axis)
                units = shape[1]
                if units:
                    if self._numba is None:
                        self._numba = _numba_kernels()
                    offset = self._flags.reserve(units)
                    flags = self._flags.array[offset : offset + units]
                    self._numba.mark_units(U.host_units(grad, shape), flags, False)
            rows.table[row] = (position, slot, units, offset)
            return
        units, offset, dims, out = self._unit_view(device, row, grad.shape, axis)
        rows.table[row] = (position, slot, units, offset)
        unit_norms_into(grad, dims, out)

    def _unit_view(self, device, row: int, shape: torch.Size, axis):
        """Where a device-path gradient's unit norms go: (units, offset, dims, out view),
        the view made once per row while its shape and offset stay the same."""
        dims = U.reduced_dims(shape, axis) if self._unit_axes is not None else ()
        units = U.unit_shape(shape, axis)[1] if dims else 1
        if units == 0:  # no elements: one norm, 0
            dims = ()
        span = max(units, 1)
        offset = self._norms_used.get(device, 0)
        self._norms_used[device] = offset + span
        norms = self._norms.get(device)
        if norms is None or offset + span > len(norms):
            size = max(offset + span, 1024, 0 if norms is None else 2 * len(norms))
            grown = torch.zeros(size, device=device)
            if norms is not None:
                grown[:offset] = norms[:offset]
            norms = self._norms[device] = grown
            self._views[device] = []
        views = self._views.setdefault(device, [])
        key = (shape, offset)
        if row < len(views) and views[row][0] == key:
            return (units if self._unit_axes is not None else 0), offset, *views[row][1]
        out = norms[offset] if not dims else norms[offset : offset + units]
        cached = (key, (dims, out))
        if row < len(views):
            views[row] = cached
        else:
            views.append(cached)
        return (units if self._unit_axes is not None else 0), offset, dims, out

    def sums_of_squares(self, n_layers: int, on_device):
        """The record's output-gradient sums of squares, on the device of `on_device` (which
        makes host arrays cached device tensors): values [n] float32, the layer of each [n],
        and the number of gradients of each layer [L] (float64). The CPU kernels give one value
        per gradient, the device path one per unit (its norms, squared)."""
        values, layers, grads = [], [], []
        for where, rows in self._rows.items():
            if not rows.used:
                continue
            grads.append(rows.column(0))
            if self._kernels.numba_for(where):
                values.append(self._buffers[where][: rows.used].to(on_device.device))
                layers.append(rows.column(0))
                continue
            spans = np.maximum(rows.column(2), 1)  # the device path stores unit norms
            norms = self._norms[where][: int(spans.sum())]
            values.append(norms.square().to(on_device.device))
            layers.append(np.repeat(rows.column(0), spans))
        if not values:
            return (
                torch.zeros(0, device=on_device.device),
                on_device([], torch.long),
                on_device(np.zeros(n_layers), torch.float64),
            )
        calls = np.bincount(np.concatenate(grads), minlength=n_layers).astype(np.float64)
        return (
            values[0] if len(values) == 1 else torch.cat(values),
            on_device(np.concatenate(layers), torch.long),
            on_device(calls, torch.float64),
        )

    def unit_flags(self, on_device) -> tuple[U.UnitLayout, torch.Tensor, torch.Tensor]:
        """The record's units (canonical order), and values [n] that are nonzero where a
        gradient element was (float32: CPU flags, or unit norms), with the canonical position
        of each [n], on the device of `on_device` (see `sums_of_squares`)."""
        tables = {where: rows.table[: rows.used] for where, rows in self._rows.items()}
        entries = [
            np.column_stack([np.zeros(len(t), dtype=np.int64), t])[t[:, 2] > 0]
            for t in tables.values()
        ]
        layout = U.layout_of(np.concatenate(entries) if entries else np.zeros((0, 5), np.int64))
        values, positions = [], []
        for (where, table), rows in zip(tables.items(), entries, strict=True):
            if not len(rows):
                continue
            positions.append(layout.positions(rows))
            if self._kernels.numba_for(where):
                flags = self._flags.array[U.buffer_positions(rows)]
                values.append(torch.from_numpy(flags).to(on_device.device))
            elif len(rows) == len(table):  # every gradient has units: all the norms, in order
                values.append(self._norms[where][: rows[-1, 4] + rows[-1, 3]].to(on_device.device))
            else:
                kept = S.host_to_device(U.buffer_positions(rows), torch.long, where)
                values.append(self._norms[where][kept].to(on_device.device))
        if not values:
            return layout, torch.zeros(0, device=on_device.device), on_device([], torch.long)
        joined = values[0] if len(values) == 1 else torch.cat(values)
        return layout, joined, on_device(np.concatenate(positions), torch.long)

    def clear(self) -> None:
        for rows in self._rows.values():
            rows.used = 0
        self._norms_used.clear()
        self._flags.clear()

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
