"""The HDF5 run store: `RunWriter` writes run files, `open_run` reads them (docs/run-file.md)."""

from gradscope.store._reader import Run, open_run
from gradscope.store._writer import RunWriter

__all__ = ["Run", "RunWriter", "open_run"]
