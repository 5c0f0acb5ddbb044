"""The HDF5 run store: `RunWriter` writes run files, `open_run` reads them (docs/run-file.md)."""

from gradscope.store._blocks import block_means
from gradscope.store._reader import Run, open_run
from gradscope.store._writer import RunWriter

__all__ = ["Run", "RunWriter", "block_means", "open_run"]
