"""torch.compile's code in this process: how much of it others compiled, and dropping all of it."""

from __future__ import annotations

import sys
from contextlib import contextmanager

_own_frames = 0  # frames compiled for gradscope's own kernels (`compiling_our_own`)


def _compiled_frames() -> int:
    """Frames dynamo has compiled in this process (recompiles too), 0 before it is imported."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return counters["frames"]["total"]


def frames_compiled_by_others() -> int:
    """Frames dynamo has compiled in this process that are not gradscope's own kernels: when
    this number moves, someone's model or function has gone through torch.compile."""
    return _compiled_frames() - _own_frames


@contextmanager
def compiling_our_own():
    """Count what dynamo compiles inside this block as gradscope's (not the user's)."""
    global _own_frames
    before = _compiled_frames()
    try:
        yield
    finally:
        _own_frames += _compiled_frames() - before


def forget_compiled_code() -> None:
    """Drop torch.compile's cached code, which does not notice hooks added or removed later.

    Dynamo skips guards on module hooks, so code compiled before attach (for this model or any
    other instance of its classes) would run without the recorder's hooks, and code compiled
    while attached would keep calling them after close. Compiled models recompile once.
    """
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()
