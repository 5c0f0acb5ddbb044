"""Exception types raised at gradscope's public boundary."""


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
