"""What an operating-system or HDF5 failure was, in a few words, for messages to the user."""

import os
import re

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
