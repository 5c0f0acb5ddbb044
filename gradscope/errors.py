"""Exception and warning types raised at gradscope's public boundary, and failures in words."""

import os
import re


class GradscopeError(Exception):
    """Base class of the errors gradscope raises on purpose."""


class RunFileError(GradscopeError):
    """A run file is missing, unreadable, not a gradscope run, or inconsistent."""


class UsageError(GradscopeError):
    """Bad input from the user (arguments, names, paths); the CLI exits with code 2."""


class NonFiniteError(GradscopeError):
    """A non-finite value reached an update under `attach(..., nonfinite="raise")`.

    Raised from `optimizer.step()` (or `rec.read_gradients()`) before the update, so the
    weights are those that produced the value. `origin` says where it first appeared (a
    `NonFiniteOrigin`); `step`, `phase`, `layer`, `op` and `rank` are its fields.
    """

    def __init__(self, origin):
        self.origin = origin
        self.step = origin.step
        self.phase = origin.phase
        self.layer = origin.layer
        self.op = origin.op
        self.rank = origin.rank
        held = "the update was not applied" if origin.update == "raised" else "it was applied"
        super().__init__(f"{origin.sentence()} (nonfinite='raise': {held})")


class RunFileWarning(UserWarning):
    """Recording into a run file went wrong but training goes on: the file stopped being
    written (a full disk, a failing one, a removed folder), or the disk fell behind and
    records were dropped."""


# HDF5 reports a failed write of its caches as text: "... errno = 28, error message = '...'"
_HDF5_ERRNO = re.compile(r"errno = (\d+), error message = '([^']*)'")


def describe(error: BaseException) -> str:
    """What went wrong, in a few words: "No space left on device [errno 28]"."""
    if getattr(error, "explained", False):  # says it all itself (a file that vanished)
        return error.strerror
    code = getattr(error, "errno", None)
    if isinstance(error, OSError) and code:
        return f"{os.strerror(code)} [errno {code}]"
    found = _HDF5_ERRNO.search(str(error))
    if found:
        return f"{found.group(2)} [errno {found.group(1)}]"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
