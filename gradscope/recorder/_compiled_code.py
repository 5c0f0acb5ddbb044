"""torch.compile's code in this process: how much of it others compiled, dropping theirs, and
hooks that run untraced inside compiled models."""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager, nullcontext
from types import CodeType

import torch

_own_frames = 0  # frames compiled for gradscope's own kernels (`compiling_our_own`)
_own_codes: set[CodeType] = set()  # the functions of those kernels, whose code is kept
_others_frames_dropped = 0  # frames compiled by others when their code was last dropped


def _compiled_frames() -> int:
    """Frames dynamo has compiled in this process (recompiles too), 0 before it is imported.

    Counted per compile id, which every compile takes, with `fullgraph=True` or without
    (`counters["frames"]` counts only the latter)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.convert_frame import FRAME_COMPILE_COUNTER

    return sum(FRAME_COMPILE_COUNTER.values())


def frames_compiled_by_others() -> int:
    """Frames dynamo has compiled in this process that are not gradscope's own kernels: when
    this number moves, someone's model or function has gone through torch.compile."""
    return _compiled_frames() - _own_frames


@contextmanager
def compiling_our_own(code: CodeType):
    """Count what dynamo compiles inside this block, for the function of `code`, as gradscope's
    (not the user's): it is not counted as others' and `forget_compiled_code` keeps it."""
    global _own_frames
    _own_codes.add(code)
    before = _compiled_frames()
    try:
        yield
    finally:
        _own_frames += _compiled_frames() - before


def forget_compiled_code() -> None:
    """Drop the code torch.compile compiled for others since this was last called, which does
    not notice hooks added or removed later.

    Dynamo skips guards on module hooks, so code compiled before attach (for this model or any
    other instance of its classes) would run without the recorder's hooks, and code compiled
    while attached would keep calling them after close. Compiled code has to go, and dynamo
    cannot tell which of it saw the model, so all of others' code goes and recompiles once.
    Nothing else is touched: not the code of gradscope's own kernels, not dynamo's settings,
    counters or learned dynamic shapes; and when nobody else has compiled anything since the
    last call (most runs), nothing at all.
    """
    global _others_frames_dropped
    others = frames_compiled_by_others()
    if others == _others_frames_dropped:
        return
    from torch._C._dynamo.eval_frame import reset_code
    from torch._dynamo import convert_frame

    with getattr(convert_frame, "compile_lock", nullcontext()):  # older torch may lack it
        for weak_code in convert_frame.input_codes.seen + convert_frame.output_codes.seen:
            code = weak_code()
            if code is not None and code not in _own_codes:
                reset_code(code)
    _others_frames_dropped = others


def untraced(method):
    """`method`, run as it is even where dynamo traces its caller (the hooks of a compiled
    model): hooks that fill host tables, call numba or keep references, which dynamo must not
    trace. Untraced calls cost one test in eager mode, where torch.compiler.disable costs about
    1 µs per call."""
    eager = torch.compiler.disable(method)

    @functools.wraps(method)
    def wrapper(*args):
        if torch.compiler.is_compiling():
            return eager(*args)
        return method(*args)

    return wrapper
