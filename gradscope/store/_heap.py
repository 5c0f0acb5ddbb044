"""Giving the C heap's free memory back to the operating system (glibc's malloc_trim)."""

import ctypes
import functools


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> None:
    """Return the free pages inside the C heap to the OS, where glibc can (about 0.4 ms for a
    200 MB heap): memory freed in pieces of many sizes otherwise stays resident."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
