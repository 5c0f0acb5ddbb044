"""Finding run files under one runs folder, safely, and caching the open ones."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gradscope.errors import GradscopeError, RunFileError, UsageError
from gradscope.figures import assign_colours, run_label, run_model
from gradscope.store import is_probe, open_run, probe_layout

RUN_SUFFIX = ".h5"
READ_WAIT_SECONDS = 10.0  # a request waits this long for a run another request is reading
# A live run's entry is read again when its file changed (each flush) or after this long (its
# writer may have died, leaving the file unchanged): not at every page's every poll.
LIVE_RECHECK_SECONDS = 5.0


@dataclass(frozen=True)
class RunEntry:
    """One `.h5` file under the runs folder, as the run list shows it."""

    rel: str  # path relative to the runs folder, with "/" separators: the id the browser uses
    folder: str  # folder part of `rel` ("." for the top level)
    name: str  # file name
    mtime: float  # seconds since the epoch
    inode: int  # tells a replaced file from the one it replaced
    model: str | None = None  # what the run is: the recorded model name, else its class name
    label: str | None = None  # the run's name in figures and legends ("worked/resnet56")
    created: str = ""  # when the file was created (ISO 8601), the order colours are given in
    records: int | None = None  # number of recorded steps, when the file opened
    is_live: bool = False  # the writer has not closed the file yet
    write_error: str | None = None  # why writing the file stopped, if it failed
    dropped: int = 0  # records the writer dropped because the disk fell behind
    error: str | None = None  # why the file could not be opened, if it could not
    probe: bool = False  # a probe file (gradscope probe): listed apart from training runs
    widths: tuple = ()  # a probe's widths swept (empty: a probe of one model)


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells one version of a file from the next: inode, size, modification time."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class RunIndex:
    """The run files under one folder; every path a request names is checked against it."""

    def __init__(self, runs_dir: str | os.PathLike):
        root = Path(runs_dir).expanduser()
        if root.exists() and not root.is_dir():
            raise UsageError(
                f"runs folder {str(root)!r} is a file; give the folder that holds the run files"
            )
        if not root.is_dir():
            raise UsageError(f"runs folder {str(root)!r} does not exist")
        self.root = root.resolve()
        self._lock = threading.RLock()
        self._runs: dict[str, _CachedRun] = {}  # rel -> its open Run, inode and lock
        self._summaries: dict[str, tuple[tuple[int, int, int], RunEntry]] = {}
        self._colours: dict[str, str] = {}  # run label -> colour, over every run in the folder

    def resolve(self, rel: str) -> Path:
        """Turn a browser-supplied relative path into a file path inside the runs folder.

        Raises UsageError for anything that is not a `.h5` file under the runs folder,
        including `..` tricks, absolute paths and symlinks that lead outside.
        """
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise UsageError(f"not a run path: {rel!r}")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise UsageError(f"{rel!r} is outside the runs folder")
        if path.suffix != RUN_SUFFIX:
            raise UsageError(f"{rel!r} is not a {RUN_SUFFIX} run file")
        if not path.is_file():
            raise UsageError(f"run file {rel!r} does not exist")
        return path

    def relative_message(self, text: str, rel: str | None = None) -> str:
        """`text` with the runs folder's absolute path cut from file paths, as the page shows it.

        With `rel`, a leading "<rel>: " is cut too (the run list names the file already).
        """
        text = text.replace(f"{self.root}{os.sep}", "")
        return text.removeprefix(f"{rel}: ") if rel else text

    def scan(self) -> list[RunEntry]:
        """Every run file under the runs folder (recursively), sorted by folder then name."""
        entries = []
        for path in self.root.rglob(f"*{RUN_SUFFIX}"):
            rel = path.relative_to(self.root).as_posix()
            try:
                real = self.resolve(rel)
                stat = real.stat()
            except (UsageError, OSError):
                continue  # symlinks leading outside, or files removed while scanning
            entries.append(self._summary(rel, real, stat))
        readable = sorted((e.created, e.label) for e in entries if e.label is not None)
        colours = assign_colours(label for _, label in readable)
        with self._lock:
            self._colours = colours
        return sorted(entries, key=lambda e: (e.folder != ".", e.folder, e.name))

    def colours(self) -> dict[str, str]:
        """{run label: colour} of every readable run, as of the latest scan: a run keeps its
        colour in every panel, and across page loads (labels are taken in creation order,
        each its preferred colour unless an older run took it)."""
        with self._lock:
            if self._colours:
                return dict(self._colours)
        self.scan()
        with self._lock:
            return dict(self._colours)

    def _summary(self, rel: str, path: Path, stat: os.stat_result) -> RunEntry:
        """The run-list entry of one file, reopened only when the file changed (or, for a live
        run, every LIVE_RECHECK_SECONDS: it stops being live without changing)."""
        sig = _signature(stat)
        now = time.monotonic()
        with self._lock:
            cached = self._summaries.get(rel)
            if cached is not None and cached[0] == sig:
                _, entry, read_at = cached
                if not entry.is_live or now - read_at < LIVE_RECHECK_SECONDS:
                    return entry
        folder = Path(rel).parent.as_posix()
        base = dict(rel=rel, folder=folder, name=path.name, mtime=stat.st_mtime, inode=stat.st_ino)
        try:
            run = open_run(path)
        except GradscopeError as e:
            entry = RunEntry(**base, error=self.relative_message(str(e), rel))
        except OSError as e:
            entry = RunEntry(**base, error=self.relative_message(f"cannot read file: {e}", rel))
        else:
            try:
                run.check_readable()  # a copy cut short opens, but its records are not all there
                entry = RunEntry(
                    **base,
                    model=run_model(run),
                    label=run_label(run),
                    created=str(run.attrs.get("created", "")),
                    records=len(run.steps),
                    is_live=bool(run.is_live),
                    **_probe_fields(run),
                    write_error=run.write_error,
                    dropped=run.dropped_records,
                )
            except GradscopeError as e:  # a malformed probe attribute
                entry = RunEntry(**base, error=self.relative_message(str(e), rel))
            finally:
                run.close()
        with self._lock:
            self._summaries[rel] = (sig, entry, now)
        return entry

    @contextlib.contextmanager
    def open_runs(self, rels: list[str]) -> Iterator[list]:
        """Open (or reuse) the runs at `rels`, refreshed to their latest records.

        Each run is held (its own lock, not the index's) while the caller reads it, so a timer
        refresh in another callback thread cannot change it under a figure being built, and a
        slow file delays only the requests that read it. Raises the first run's error.
        """
        with self._held(rels, problems=None) as held:
            yield [held[rel].run for rel in rels]

    @contextlib.contextmanager
    def open_good_runs(self, rels: list[str]) -> Iterator[tuple[list, list]]:
        """Like `open_runs`, but yields (the runs that opened, [(rel, message) for those that
        did not]), so one bad file costs only its own part of a page."""
        problems = []
        with self._held(rels, problems) as held:
            yield [held[rel].run for rel in rels if rel in held], problems

    @contextlib.contextmanager
    def _held(self, rels: list[str], problems: list | None) -> Iterator[dict]:
        """{rel: locked cache entry}; a run that fails to open raises, or with a `problems`
        list is noted there as (rel, message) and left out."""
        held: dict[str, _CachedRun] = {}
        try:
            for rel in sorted(set(rels)):  # one order for every request: no lock cycles
                try:
                    held[rel] = self._acquire(rel)
                except GradscopeError as e:
                    if problems is None:
                        raise
                    problems.append((rel, self.relative_message(str(e))))
            yield held
        finally:
            for entry in held.values():
                entry.lock.release()

    def _acquire(self, rel: str) -> _CachedRun:
        """The cached open Run of `rel`, locked for the caller and refreshed (or reopened when
        the file was replaced or changed under the handle)."""
        path = self.resolve(rel)
        try:
            inode = path.stat().st_ino
        except OSError as e:
            raise RunFileError(f"cannot read {rel}: {e.strerror or e}") from e
        with self._lock:  # only the cache dict: no file is read under the index lock
            entry = self._runs.get(rel)
            if entry is None or entry.inode != inode:
                if entry is not None:
                    _close_when_free(entry)
                entry = self._runs[rel] = _CachedRun(inode)
        if not entry.lock.acquire(timeout=READ_WAIT_SECONDS):
            raise RunFileError(
                f"{rel}: another request has been reading this file for over "
                f"{READ_WAIT_SECONDS:g} s; it is skipped for now"
            )
        try:
            if entry.run is not None:
                try:
                    entry.run.refresh()
                    return entry
                except (GradscopeError, OSError):
                    _close_quietly(entry.run)  # the file changed under the handle: reopen it
                    entry.run = None
            entry.run = open_run(path)
            return entry
        except OSError as e:
            entry.lock.release()
            raise RunFileError(f"cannot read {rel}: {e.strerror or e}") from e
        except BaseException:
            entry.lock.release()
            raise

    def close(self) -> None:
        """Close every cached run."""
        with self._lock:
            for entry in self._runs.values():
                _close_when_free(entry)
            self._runs.clear()


def _probe_fields(run) -> dict:
    """RunEntry's probe and widths of an open run."""
    if not is_probe(run):
        return {}
    layout = probe_layout(run)
    return {"probe": True, "widths": layout.widths if layout.is_sweep else ()}


@dataclass
class _CachedRun:
    """An open run of the index, with the lock its readers hold."""

    inode: int  # of the file the run was opened from
    run: object = None  # the open Run (None until first opened, or after a failure)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _close_when_free(entry: _CachedRun) -> None:
    """Close a cached run unless a request is reading it (it is then dropped unclosed, and
    closed when the last reference goes)."""
    if entry.lock.acquire(blocking=False):
        try:
            if entry.run is not None:
                _close_quietly(entry.run)
                entry.run = None
        finally:
            entry.lock.release()


def _close_quietly(run) -> None:
    """Close a run whose file may already be gone; a failure to close changes nothing here."""
    with contextlib.suppress(Exception):
        run.close()
