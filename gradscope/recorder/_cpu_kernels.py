"""One-pass CPU kernels (numba): an output's sums for act_*, each parameter's sums for grad_*."""

from __future__ import annotations

import numba
import numpy as np

# Reassociation lets LLVM vectorize the running sums (several float32 lanes, so the sums are
# about as accurate as torch's); no "nnan"/"ninf", so NaN and inf behave as in IEEE math: they
# propagate into the sums, and a NaN counts as nonzero. numba widens integer arithmetic to 64
# bits, and x86 has no vector max of unsigned 64-bit lanes: the magnitudes are cast back to
# uint32 and maxed with a select, which LLVM turns into one vector max (1.5x faster a pass).
_FAST = {"reassoc", "contract", "nsz", "arcp"}
_MAGNITUDE_BITS = np.uint32(0x7FFFFFFF)  # a float32's bits without the sign


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def sums_into(x: np.ndarray, out: np.ndarray) -> None:
    """out[:9] of the 1-D float32 array `x`, one pass: sum(x), sum(x*x), max|x|,
    count(x != 0), then the shift c = x[0] and the sums of y, y^2, y^3, y^4 for y = x - c.

    max|x| is an integer max over the bits without the sign: for float32 the order of those
    bits is the order of the magnitudes (inf last, any NaN above it), and unlike a float max it
    vectorizes. The count is exact below 2**24 elements (float32 lanes); callers use another
    path above. The shifted power sums give the central moments (act_kurtosis) without the
    cancellation of raw x^3, x^4 sums when the mean is far from 0: c is one of the values, so
    the mean of y is of the order of the spread.
    """
    if out.shape[0] < 9:
        raise ValueError("sums_into needs an output row of 9")
    bits = x.view(np.uint32)
    total = np.float32(0.0)
    sumsq = np.float32(0.0)
    nonzeros = np.float32(0.0)
    top = np.uint32(0)
    shift = x[0] if x.shape[0] else np.float32(0.0)
    y1 = np.float32(0.0)
    y2 = np.float32(0.0)
    y3 = np.float32(0.0)
    y4 = np.float32(0.0)
    for i in range(x.shape[0]):
        v = x[i]
        total += v
        sumsq += v * v
        nonzeros += np.float32(1.0) if v != 0 else np.float32(0.0)
        magnitude = np.uint32(bits[i] & _MAGNITUDE_BITS)
        top = magnitude if magnitude > top else top
        y = v - shift
        yy = y * y
        y1 += y
        y2 += yy
        y3 += yy * y
        y4 += yy * yy
    out[0] = total
    out[1] = sumsq
    out.view(np.uint32)[2] = top
    out[3] = nonzeros
    out[4] = shift
    out[5] = y1
    out[6] = y2
    out[7] = y3
    out[8] = y4


_INF_BITS = np.uint32(0x7F800000)  # the sign-less bits of inf; above them, NaN
_CHUNK = 4096  # float32 partial sums over this many elements, then added up in float64


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _chunk_sums(x: np.ndarray, bits: np.ndarray):
    """Sum, sum of squares, max magnitude bits and inf/NaN count of a short float32 run."""
    total = np.float32(0.0)
    sumsq = np.float32(0.0)
    nonfinite = np.float32(0.0)
    top = np.uint32(0)
    for i in range(x.shape[0]):
        v = x[i]
        total += v
        sumsq += v * v
        magnitude = np.uint32(bits[i] & _MAGNITUDE_BITS)
        top = magnitude if magnitude > top else top
        nonfinite += np.float32(1.0) if magnitude >= _INF_BITS else np.float32(0.0)
    return total, sumsq, top, nonfinite


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def param_sums_into(flat: np.ndarray, bounds: np.ndarray, out: np.ndarray) -> None:
    """Per parameter p, the float32 values flat[bounds[p]:bounds[p + 1]], in one pass:
    out[p] = sum, sum of squares, max |x|, count of inf/NaN (float64 totals).

    Partial sums run in float32 lanes over chunks of 4,096 elements and are added in float64,
    so the totals stay accurate (and the count exact) whatever the parameter's size.
    """
    if out.shape[0] < bounds.shape[0] - 1 or out.shape[1] < 4:
        raise ValueError("param_sums_into needs an output of [parameters, 4]")
    bits = flat.view(np.uint32)
    top_bits = np.zeros(1, dtype=np.uint32)
    for p in range(bounds.shape[0] - 1):
        stop = bounds[p + 1]
        total = 0.0
        sumsq = 0.0
        nonfinite = 0.0
        top = np.uint32(0)
        for start in range(bounds[p], stop, _CHUNK):
            end = min(start + _CHUNK, stop)
            part = _chunk_sums(flat[start:end], bits[start:end])
            total += part[0]
            sumsq += part[1]
            top = max(top, part[2])
            nonfinite += part[3]
        top_bits[0] = top
        out[p, 0] = total
        out[p, 1] = sumsq
        out[p, 2] = top_bits.view(np.float32)[0]
        out[p, 3] = nonfinite


@numba.njit(cache=True, nogil=True)
def mark_units(x: np.ndarray, flags: np.ndarray, positive: bool) -> None:
    """flags[u] = 1.0 where unit u of `x` [outer, units, inner] has an element > 0 (`positive`)
    or != 0 (else), 0.0 where none has. NaN is not > 0 and is != 0, as in IEEE math.

    Each unit's scan stops at its first such element, so a unit that has one costs a read or
    two (rows come first in a unit's run): the pass costs about nothing in a healthy layer and
    a full read only of the units that have none.
    """
    outer, units, inner = x.shape
    if flags.shape[0] < units:
        raise ValueError("mark_units needs a flag per unit")
    for u in range(units):
        found = 0.0
        for o in range(outer):
            for s in range(inner):
                v = x[o, u, s]
                if v > 0 if positive else v != 0:
                    found = 1.0
                    break
            if found:
                break
        flags[u] = found


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def unit_sumsq_into(x: np.ndarray, out: np.ndarray) -> None:
    """out[u] = the sum of squares of unit u of `x` [outer, units, inner] (float64 totals of
    float32 runs along `inner`), one pass: act_outlier_channel's per-unit sums."""
    outer, units, inner = x.shape
    if out.shape[0] < units:
        raise ValueError("unit_sumsq_into needs a sum per unit")
    for u in range(units):
        out[u] = 0.0
    for o in range(outer):
        for u in range(units):
            run = np.float32(0.0)
            for s in range(inner):
                v = x[o, u, s]
                run += v * v
            out[u] += run
