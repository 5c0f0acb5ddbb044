"""Which kernels a recorder runs ($GRADSCOPE_KERNELS), and the device path's batched reductions."""

from __future__ import annotations

import os
import warnings

import torch

from gradscope.errors import UsageError
from gradscope.recorder._compiled_code import compiling_our_own

KERNELS_ENV = "GRADSCOPE_KERNELS"
# auto: one-pass numba kernels for CPU tensors, the device path elsewhere; torch: the device
# path on every device (numba is never imported), as a GPU runs it.
KERNEL_MODES = ("auto", "torch")
SAMPLE_GROUP_BYTES = 32 * 1024 * 1024  # a sample group's buffer at most; reduced when full
EXACT_FLOAT32_COUNT = 2**24  # float32 holds every integer count up to here exactly


class KernelChoice:
    """The kernels of one recorder, fixed at attach from $GRADSCOPE_KERNELS."""

    def __init__(self, mode: str):
        if mode not in KERNEL_MODES:
            raise ValueError(f"kernel mode must be one of {KERNEL_MODES}, not {mode!r}")
        self.mode = mode

    def numba_for(self, device: torch.device) -> bool:
        """Whether tensors on `device` go through the one-pass numba kernels (CPU, auto)."""
        return self.mode == "auto" and device.type == "cpu"

    @property
    def numba_on_cpu(self) -> bool:
        """`numba_for` a CPU device: fixed at attach, so hooks test `tensor.is_cpu` only."""
        return self.mode == "auto"

    def __repr__(self) -> str:
        return f"KernelChoice({self.mode!r})"


def kernel_choice() -> KernelChoice:
    """The KernelChoice that $GRADSCOPE_KERNELS asks for (default auto)."""
    mode = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise UsageError(
            f"{KERNELS_ENV}={os.environ[KERNELS_ENV]!r}: expected one of {', '.join(KERNEL_MODES)}"
        )
    return KernelChoice(mode)


class SampleGroup:
    """Copies of sampled outputs of one size and unit shape on one device, rows of a reused
    float32 buffer [rows, numel], reduced together: one copy op per output in the hook (the
    value it had then: in-place ops come later), and one compiled kernel for all of them.
    `units` (outer, units, inner): a row's elements as [outer, units, inner] (`_units`).

    Reducing one output at a time costs several ops each (or a compiled kernel whose call
    alone costs more than those ops); copying its rows is one op, and the copy also turns
    low-precision and channels-last outputs into float32 rows.
    """

    def __init__(self, device: torch.device, numel: int, units: tuple[int, int, int]):
        self.device = device
        self.numel = numel
        self.units = units
        self.max_rows = max(1, SAMPLE_GROUP_BYTES // (4 * numel))
        self.buffer = torch.empty((min(8, self.max_rows), numel), device=device)
        self.calls: list[int] = []  # the call (row of the caller's table) of each used row
        # the buffer's rows as views shaped like the outputs seen first (made once, not in
        # every hook: indexing and reshaping cost more than the copy on a small output)
        self._shape: torch.Size | None = None
        self._rows: list[torch.Tensor] = []

    @property
    def full(self) -> bool:
        """No room for another row: reduce before adding more."""
        return len(self.calls) == self.max_rows

    def add(self, x: torch.Tensor, call: int) -> None:
        """Copy `x` (numel elements, any shape, layout and float dtype) into the next row."""
        row = len(self.calls)
        if row == len(self.buffer):
            grown = torch.empty((min(2 * row, self.max_rows), self.numel), device=self.device)
            grown[:row] = self.buffer
            self.buffer = grown
            self._rows = []
        if self._shape is None:
            self._shape = x.shape
        if x.shape != self._shape:
            self.buffer[row].view(x.shape).copy_(x)
        else:
            if not self._rows:
                self._rows = list(self.buffer.view(-1, *self._shape).unbind())
            self._rows[row].copy_(x)
        self.calls.append(call)

    def reduce(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The used rows' sums [rows, 9] (float64: sum, sum of squares, max |x|, nonzero
        count, then the shift c (the row's first element) and the sums of y, y^2, y^3, y^4 for
        y = x - c), unit flags [rows, units] (float32: 1.0 where a unit has an element > 0)
        and units' sums of squares [rows, units] (float64); the group is then empty. One
        compiled kernel reads the rows (`group_sums`)."""
        rows = self.buffer[: len(self.calls)]
        self.calls = []
        return group_sums(rows.view(len(rows), *self.units))


def _group_sums(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of rows [rows, outer, units, inner]: per row sum, sum of squares, max |x| (NaN
    propagates), nonzero count (NaN counts), shift and shifted power sums [rows, 9], in
    float64 from float32 passes, per unit whether any element is > 0 [rows, units] and its
    sum of squares [rows, units]; compiled, one fused kernel."""
    positive = (rows > 0).any(3).any(1).float()
    unit_sumsq = (rows * rows).sum((1, 3), dtype=torch.float64)
    rows = rows.flatten(1)
    nonzeros = (rows != 0).sum(1, dtype=torch.float64)  # integer counts: exact
    shift = rows[:, :1]
    y = rows - shift
    yy = y * y
    stats = [rows.sum(1), (rows * rows).sum(1), rows.abs().amax(1), nonzeros, shift[:, 0]]
    stats += [y.sum(1), yy.sum(1), (yy * y).sum(1), (yy * yy).sum(1)]
    return torch.stack([s.double() for s in stats], 1), positive, unit_sumsq


def _group_sums_eager(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same in plain torch ops, each a pass over the rows, which they overwrite (float64
    sums run several times slower on CPU than float32 ones)."""
    positive = torch.gt(rows, 0).any(3).any(1).float()
    unit_sumsq = torch.linalg.vector_norm(rows, 2, dim=(1, 3)).double().square_()
    rows = rows.flatten(1)
    shift = rows[:, :1].clone()
    y = rows - shift
    y1 = y.sum(1)
    yy = y * y
    y2 = yy.sum(1)
    y3 = (yy * y).sum(1)
    y4 = yy.square_().sum(1)
    total = rows.sum(1)
    sumsq = torch.linalg.vector_norm(rows, 2, dim=1).square_()
    rows.abs_()
    absmax = rows.amax(1)
    torch.ne(rows, 0, out=rows)  # 1.0 where x != 0 (NaN too), else 0.0
    exact = rows.shape[1] < EXACT_FLOAT32_COUNT  # a float32 count is exact below
    nonzeros = rows.sum(1) if exact else rows.sum(1, dtype=torch.float64)
    stats = [total, sumsq, absmax, nonzeros, shift[:, 0], y1, y2, y3, y4]
    return torch.stack([s.double() for s in stats], 1), positive, unit_sumsq


class CompiledOrEager:
    """A function compiled once with symbolic sizes (inductor: C++ on CPU, Triton on CUDA),
    called once a record, not per layer, so its call overhead does not matter. Called where
    dynamo traces a user's code (an optimizer step inside a compiled function), it stays out of
    their graph. If compiling fails, a warning says why and the plain torch version takes over,
    with the same values."""

    def __init__(self, fn, eager, what: str):
        self._compiled = torch.compile(fn, dynamic=True)
        self._code = fn.__code__
        self._eager = eager
        self._what = what

    @torch._dynamo.disable
    def __call__(self, *args):
        if self._compiled is not None:
            try:
                with compiling_our_own(self._code):  # kept, and not counted as the user's
                    return self._compiled(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure: say so, run eagerly
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
                warnings.warn(
                    f"gradscope: compiling {self._what} failed ({type(e).__name__}: "
                    f"{first_line}); recording with plain torch ops instead, which give the "
                    "same values more slowly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._compiled = None
        return self._eager(*args)


group_sums = CompiledOrEager(_group_sums, _group_sums_eager, "the activation sums")


def unit_norms_into(g: torch.Tensor, dims: tuple[int, ...], out: torch.Tensor) -> None:
    """out[u] = ||g's unit u|| in float32 (`dims`: the dims reduced, all but the unit's; ()
    for one unit: the whole norm): one reduction on any device, layout and dtype. Callers
    square a whole buffer of them once per record, for act_grad_norm, and test it for zeros,
    for act_grad_zero_frac: a unit whose every |g| is below about 4e-23 (whose squares all
    underflow float32) counts as zero on this path."""
    if dims:
        torch.linalg.vector_norm(g, 2, dim=dims, dtype=torch.float32, out=out)
    else:
        torch.linalg.vector_norm(g, 2, dtype=torch.float32, out=out)
