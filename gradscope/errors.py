"""Exception types raised at gradscope's public boundary."""


class GradscopeError(Exception):
    """Base class of the errors gradscope raises on purpose."""


class RunFileError(GradscopeError):
    """A run file is missing, unreadable, not a gradscope run, or inconsistent."""


class UsageError(GradscopeError):
    """Bad input from the user (arguments, names, paths); the CLI exits with code 2."""
