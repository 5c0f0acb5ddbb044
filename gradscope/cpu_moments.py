"""One-pass CPU kernels (numba): an output's sums for act_*, an output gradient's sum of squares."""

from __future__ import annotations

import numba
import numpy as np

# Reassociation lets LLVM vectorize the running sums (several float32 lanes, so the sums are
# about as accurate as torch's); no "nnan"/"ninf", so NaN and inf behave as in IEEE math: they
# propagate into the sums, and a NaN counts as nonzero.
_FAST = {"reassoc", "contract", "nsz", "arcp"}
_MAGNITUDE_BITS = np.uint32(0x7FFFFFFF)  # a float32's bits without the sign


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def sums_into(x: np.ndarray, out: np.ndarray) -> None:
    """out[:4] = sum(x), sum(x*x), max|x|, count(x != 0) of the 1-D float32 array `x`, one pass.

    max|x| is an integer max over the bits without the sign: for float32 the order of those
    bits is the order of the magnitudes (inf last, any NaN above it), and unlike a float max it
    vectorizes. The count is exact below 2**24 elements (float32 lanes); callers use another
    path above.
    """
    if out.shape[0] < 4:
        raise ValueError("sums_into needs an output row of 4")
    bits = x.view(np.uint32)
    total = np.float32(0.0)
    sumsq = np.float32(0.0)
    nonzeros = np.float32(0.0)
    top = np.uint32(0)
    for i in range(x.shape[0]):
        v = x[i]
        total += v
        sumsq += v * v
        nonzeros += np.float32(1.0) if v != 0 else np.float32(0.0)
        top = max(top, bits[i] & _MAGNITUDE_BITS)
    out[0] = total
    out[1] = sumsq
    out.view(np.uint32)[2] = top
    out[3] = nonzeros


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def sumsq_into(x: np.ndarray, out: np.ndarray) -> None:
    """out[0] = sum(x*x) of the 1-D float32 array `x` (float32 lanes, as torch.dot)."""
    if out.shape[0] < 1:
        raise ValueError("sumsq_into needs an output row of 1")
    sumsq = np.float32(0.0)
    for i in range(x.shape[0]):
        sumsq += x[i] * x[i]
    out[0] = sumsq
