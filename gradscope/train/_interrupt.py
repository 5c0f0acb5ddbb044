"""Ctrl-C and SIGTERM during training: stop at the next step boundary, so checkpoints agree."""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what a user and a scheduler send to stop a run


class DeferredInterrupt:
    """Context manager: SIGINT and SIGTERM set `requested` instead of interrupting.

    A second Ctrl-C (SIGINT) interrupts at once with KeyboardInterrupt; SIGTERM never does:
    a scheduler sends it once and follows with SIGKILL, and under torchrun a rank may get it
    twice (from the scheduler and from the launcher). A manager entered inside another one
    shares the outer one's request, so a signal that arrives between two training loops (or in
    the last step of one) is still seen by whoever checks next.

    Signal handlers can only be set from the main thread; elsewhere Python never delivers
    signals to the code, so there is nothing to defer and the manager does nothing.
    """

    _active: DeferredInterrupt | None = None  # the outermost manager in force

    def __init__(self):
        self._signal: str | None = None  # the first stop signal received ("SIGTERM")
        self._ctrl_c = 0  # SIGINTs received
        self._outer: DeferredInterrupt | None = None
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        """True once SIGINT or SIGTERM arrived inside the block (or the enclosing one)."""
        return self._owner()._signal is not None

    @property
    def signal_name(self) -> str | None:
        """The name of the first stop signal received ("SIGINT", "SIGTERM"), or None."""
        return self._owner()._signal

    def _owner(self) -> DeferredInterrupt:
        return self._outer if self._outer is not None else self

    def _handle(self, signum, frame):
        self._signal = self._signal or signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._ctrl_c += 1
            if self._ctrl_c > 1:
                raise KeyboardInterrupt  # the second Ctrl-C is immediate

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        if DeferredInterrupt._active is not None:
            self._outer = DeferredInterrupt._active
            return self
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        DeferredInterrupt._active = self
        return self

    def __exit__(self, *exc):
        if self._previous:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            self._previous.clear()
            DeferredInterrupt._active = None
        return False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """Inside the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does (and DeferredInterrupt
    defers both while training): what a scheduler's stop does is what the user's does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
