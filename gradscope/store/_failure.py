"""What the writer says when writing a run file fails, or when it drops records."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from gradscope.errors import UsageError, describe

WRITE_ERROR_MODES = ("warn", "raise")  # attach(..., on_write_error=...)


class FileVanished(OSError):
    """The run file lost its last name while being written: its folder (or it) was removed."""

    explained = True  # its own words say what happened better than "No such file"

    def __init__(self):
        super().__init__(errno.ENOENT, "the file was deleted while being written")


def check_write_error_mode(mode) -> str:
    """`mode` if it is a valid on_write_error, else UsageError."""
    if mode not in WRITE_ERROR_MODES:
        raise UsageError(
            f"on_write_error must be one of {', '.join(map(repr, WRITE_ERROR_MODES))}, got {mode!r}"
        )
    return mode


@dataclass(frozen=True)
class WriteFailure:
    """A write that failed: the writer stopped there, and the file keeps what came before."""

    path: str  # the run file
    error: BaseException  # what HDF5 or the OS raised
    records: int  # records committed in the file before the failure (all readable)
    last_step: int | None  # the step of the last of them
    marked: bool  # the file's status says it ended by this error
    mark_error: BaseException | None = None  # why marking it failed, if it did

    @property
    def cause(self) -> str:
        """What went wrong, in a few words."""
        return describe(self.error)

    @property
    def vanished(self) -> bool:
        """The file itself is gone, and the records with it."""
        return isinstance(self.error, FileVanished)

    def kept(self) -> str:
        """What the file holds now, as a clause."""
        if self.vanished:
            return "the records written so far went with it"
        if not self.records:
            return "the file holds no record"
        upto = f" (up to step {self.last_step:,})" if self.last_step is not None else ""
        kept = f"the file keeps the {self.records:,} records written before{upto}"
        if self.marked:
            return kept + " and says that it ended by this error"
        return kept + f" (it could not be marked as ended by an error: {describe(self.mark_error)})"

    def warning(self) -> str:
        """The one warning of on_write_error="warn"."""
        return (
            f"{self.path}: writing the run failed ({self.cause}); gradscope stopped recording "
            f"into it and training goes on: {self.kept()}. "
            '(gradscope.attach(..., on_write_error="raise") stops training instead.)'
        )

    def error_message(self) -> str:
        """The RunFileError of on_write_error="raise"."""
        return f"{self.path}: writing the run failed ({self.cause}); {self.kept()}"


def dropping_warning(path: str, capacity: int) -> str:
    """The one warning given when the writer first drops a record."""
    return (
        f"{path}: the disk is not keeping up with the records ({capacity:,} are waiting to be "
        "written), so new records are dropped rather than slowing training down; the file "
        "counts them (gradscope inspect shows how many)"
    )
