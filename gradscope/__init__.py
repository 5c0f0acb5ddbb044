"""gradscope: gradient-flow diagnostics and visualization for PyTorch."""

from gradscope.diagnosis import diagnose
from gradscope.errors import GradscopeError, RunFileError, UsageError
from gradscope.store import open_run

__version__ = "0.1.0"


def attach(model, path, **kwargs):
    """Attach a recorder to `model` that streams statistics to `path`; see `gradscope.recorder`."""
    from gradscope.recorder import attach as _attach

    return _attach(model, path, **kwargs)


__all__ = [
    "GradscopeError",
    "RunFileError",
    "UsageError",
    "attach",
    "diagnose",
    "open_run",
    "__version__",
]
