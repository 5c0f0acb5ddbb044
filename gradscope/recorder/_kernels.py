"""Which kernels a recorder runs ($GRADSCOPE_KERNELS), and the device path's fused reductions."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from gradscope.errors import UsageError

KERNELS_ENV = "GRADSCOPE_KERNELS"
# auto: numba passes for CPU tensors, the device path (compiled) elsewhere; torch: the device
# path on every device, numba never imported; eager: the device path with plain torch ops, no
# compilation (for debugging, or where no compiler is at hand).
KERNEL_MODES = ("auto", "torch", "eager")


@dataclass(frozen=True)
class KernelChoice:
    """The kernels of one recorder, fixed at attach from $GRADSCOPE_KERNELS."""

    mode: str  # one of KERNEL_MODES

    def numba_for(self, device: torch.device) -> bool:
        """Whether tensors on `device` go through the one-pass numba kernels (CPU, auto)."""
        return self.mode == "auto" and device.type == "cpu"

    @property
    def compiled(self) -> bool:
        """Whether the device path runs compiled fused kernels (else plain torch ops)."""
        return self.mode != "eager"


def kernel_choice() -> KernelChoice:
    """The KernelChoice that $GRADSCOPE_KERNELS asks for (default auto)."""
    mode = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise UsageError(
            f"{KERNELS_ENV}={os.environ[KERNELS_ENV]!r}: expected one of {', '.join(KERNEL_MODES)}"
        )
    return KernelChoice(mode)


def _output_sums(x: torch.Tensor, out: torch.Tensor) -> None:
    """out[:4] = sum, sum of squares, max |x|, nonzero count of `x` (any shape and float dtype,
    summed in float32): one fused kernel once compiled."""
    x = x.float()
    out.copy_(torch.stack([x.sum(), (x * x).sum(), x.abs().amax(), (x != 0).sum().float()]))


def _output_sums_eager(x: torch.Tensor, out: torch.Tensor) -> None:
    """The same with plain torch reductions, each written in place into `out`."""
    dims = tuple(range(x.dim()))
    torch.sum(x, dim=dims, dtype=torch.float32, out=out[0])
    torch.linalg.vector_norm(x, 2, dtype=torch.float32, out=out[1])
    out[1].square_()
    torch.linalg.vector_norm(x, float("inf"), dtype=torch.float32, out=out[2])
    torch.linalg.vector_norm(x, 0, dtype=torch.float32, out=out[3])


class OutputSums:
    """Writes one output's four sums into a row of a device buffer, in one op once compiled.

    The compiled function (inductor: C++ on CPU, Triton on CUDA) takes sizes symbolically, so it
    compiles once per rank, layout and dtype of output, not per size or step. Called from a hook
    while dynamo traces a user's compiled model, it stays out of their graph. If compiling
    fails, a warning says why and plain torch ops take over (the same values).
    """

    def __init__(self, compiled: bool):
        self._compiled = None
        if compiled:
            self._compiled = torch.compile(_output_sums, dynamic=True, fullgraph=True)

    @property
    def is_compiled(self) -> bool:
        """False for the eager ops (asked for, or after a failed compilation)."""
        return self._compiled is not None

    @torch._dynamo.disable
    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        if x.numel() == 0:
            out.zero_()  # no rows: every sum is 0 (the element count, kept aside, is 0 too)
            return
        if self._compiled is not None:
            try:
                self._compiled(x, out)
                return
            except Exception as e:  # noqa: BLE001 - any compiler failure: say so, run eagerly
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
                warnings.warn(
                    f"gradscope: compiling the fused activation kernel failed "
                    f"({type(e).__name__}: {first_line}); recording with plain torch ops "
                    f"instead (set {KERNELS_ENV}=eager to choose them and silence this)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._compiled = None
        _output_sums_eager(x, out)


def grad_norm_into(g: torch.Tensor, out: torch.Tensor) -> None:
    """out = ||g|| in float32: one reduction on any device, layout and dtype (callers square
    a whole buffer of them once per record)."""
    torch.linalg.vector_norm(g, 2, dtype=torch.float32, out=out)
