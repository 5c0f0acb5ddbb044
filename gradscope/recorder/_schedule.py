"""Record schedules: which optimizer steps get a record."""

from __future__ import annotations

from collections.abc import Callable

from gradscope.errors import UsageError


def every_n(n: int) -> Callable[[int], bool]:
    """A schedule that records steps 0, n, 2n, ..."""
    return lambda step: step % n == 0


def make_schedule(every) -> Callable[[int], bool]:
    """Turn attach's `every` (a positive int or a callable `step -> bool`) into a schedule."""
    if isinstance(every, bool) or not (isinstance(every, int) or callable(every)):
        raise UsageError(f"every must be a positive int or a callable step -> bool, got {every!r}")
    if callable(every):
        return lambda step: bool(every(step))
    if every < 1:
        raise UsageError(f"every must be >= 1, got {every}")
    return every_n(every)
