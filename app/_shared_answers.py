"""Callback answers shared by every page showing the same runs: built once, for a little while."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict

ANSWERS_KEPT = 16  # a poll's redraw asks for about 7 answers; two generations fit
ANSWER_SECONDS = 10.0  # an answer is rebuilt after this long, even for runs that did not grow


class SharedAnswers:
    """A small store of callback answers keyed by everything they depend on: the selected runs'
    versions (records, live, file) and the controls. Twenty pages polling the same live runs
    ask for the same figures after each flush; the first request builds them and the others
    get the same answer (a request arriving while it is built waits for it).

    An answer is kept ANSWER_SECONDS at most, so what the versions do not capture (metrics
    logged between records, a colour taken by a new run) shows within that time; an answer
    whose build raised is not kept.
    """

    def __init__(self, kept: int = ANSWERS_KEPT, seconds: float = ANSWER_SECONDS):
        self._kept, self._seconds = kept, seconds
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, key, build):
        """The answer for `key` (JSON-able), built by `build()` if none is kept."""
        text = json.dumps(key, sort_keys=True, default=str)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(text)
            if entry is None or (entry.built is not None and now - entry.built > self._seconds):
                entry = self._entries[text] = _Entry()
            self._entries.move_to_end(text)
            while len(self._entries) > self._kept:
                self._entries.popitem(last=False)
        with entry.lock:  # one build per entry; the other requests for it wait here
            if entry.built is None:
                try:
                    entry.value = build()
                except BaseException:
                    with self._lock:
                        if self._entries.get(text) is entry:
                            del self._entries[text]
                    raise
                entry.built = time.monotonic()
            return entry.value


class _Entry:
    """One answer, and the lock its first request holds while building it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.built: float | None = None  # when the answer was built (None: not yet)
        self.value = None
