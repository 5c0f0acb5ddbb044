"""One-pass CPU kernel (numba) for an output's sum, sum of squares and nonzero count."""

from __future__ import annotations

import numba
import numpy as np

# Reassociation lets LLVM vectorize the three running sums (several float32 lanes, so the sums
# are about as accurate as torch's); no "nnan"/"ninf", so NaN and inf behave as in IEEE math:
# they propagate into the sums, and a NaN counts as nonzero.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def sums_into(x: np.ndarray, out: np.ndarray) -> None:
    """out[:3] = sum(x), sum(x*x), count(x != 0) of the 1-D float32 array `x`, in one pass.

    The count is exact below 2**24 elements (float32 lanes); callers use another path above.
    """
    total = np.float32(0.0)
    sumsq = np.float32(0.0)
    nonzeros = np.float32(0.0)
    for i in range(x.shape[0]):
        v = x[i]
        total += v
        sumsq += v * v
        nonzeros += np.float32(1.0) if v != 0 else np.float32(0.0)
    out[0] = total
    out[1] = sumsq
    out[2] = nonzeros
