"""Ctrl-C during training: defer the first one to the next step boundary, so checkpoints agree."""

import signal
import threading


class DeferredInterrupt:
    """Context manager: the first SIGINT sets `requested`; a second one interrupts at once.

    Signal handlers can only be set from the main thread; elsewhere Python never delivers
    KeyboardInterrupt, so there is nothing to defer and the manager does nothing.
    """

    def __init__(self):
        self.requested = False  # True once Ctrl-C was pressed inside the block
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C is immediate

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if threading.current_thread() is threading.main_thread():
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
        return False
