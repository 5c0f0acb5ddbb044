"""Exception and warning types raised at gradscope's public boundary."""


class GradscopeError(Exception):
    """Base class of the errors gradscope raises on purpose."""


class RunFileError(GradscopeError):
    """A run file is missing, unreadable, not a gradscope run, or inconsistent."""


class UsageError(GradscopeError):
    """Bad input from the user (arguments, names, paths); the CLI exits with code 2."""


class RunFileWarning(UserWarning):
    """Recording into a run file went wrong but training goes on: the file stopped being
    written (a full disk, a failing one, a removed folder), or the disk fell behind and
    records were dropped."""
