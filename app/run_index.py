"""Finding run files under one runs folder, safely, and caching the open ones."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gradscope.errors import GradscopeError, RunFileError, UsageError
from gradscope.store import open_run

RUN_SUFFIX = ".h5"


@dataclass(frozen=True)
class RunEntry:
    """One `.h5` file under the runs folder, as the run list shows it."""

    rel: str  # path relative to the runs folder, with "/" separators: the id the browser uses
    folder: str  # folder part of `rel` ("." for the top level)
    name: str  # file name
    mtime: float  # seconds since the epoch
    inode: int  # tells a replaced file from the one it replaced
    model: str | None = None  # the run's model class, when the file opened
    records: int | None = None  # number of recorded steps, when the file opened
    is_live: bool = False  # the writer has not closed the file yet
    error: str | None = None  # why the file could not be opened, if it could not


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells one version of a file from the next: inode, size, modification time."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class RunIndex:
    """The run files under one folder; every path a request names is checked against it."""

    def __init__(self, runs_dir: str | os.PathLike):
        root = Path(runs_dir).expanduser()
        if not root.is_dir():
            raise UsageError(f"runs folder {str(root)!r} does not exist or is not a folder")
        self.root = root.resolve()
        self._lock = threading.RLock()
        self._runs: dict[str, tuple[object, int]] = {}  # rel -> (open Run, inode)
        self._summaries: dict[str, tuple[tuple[int, int, int], RunEntry]] = {}

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
        return sorted(entries, key=lambda e: (e.folder != ".", e.folder, e.name))

    def _summary(self, rel: str, path: Path, stat: os.stat_result) -> RunEntry:
        """The run-list entry of one file, reopened only when the file changed."""
        sig = _signature(stat)
        with self._lock:
            cached = self._summaries.get(rel)
            if cached is not None and cached[0] == sig:
                return cached[1]
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
                entry = RunEntry(
                    **base,
                    model=str(run.attrs.get("model_class", "?")),
                    records=len(run.steps),
                    is_live=bool(run.is_live),
                )
            finally:
                run.close()
        if not entry.is_live:  # a live file may stop being live without changing: check again
            with self._lock:
                self._summaries[rel] = (sig, entry)
        return entry

    @contextlib.contextmanager
    def open_runs(self, rels: list[str]) -> Iterator[list]:
        """Open (or reuse) the runs at `rels`, refreshed to their latest records.

        Holds the index lock while the caller reads them, so a timer refresh in another
        callback thread cannot change a run under a figure being built.
        """
        with self._lock:
            yield [self._cached_run(rel) for rel in rels]

    def _cached_run(self, rel: str):
        """The cached open Run of `rel`: refreshed, or reopened when the file was replaced."""
        path = self.resolve(rel)
        inode = path.stat().st_ino
        cached = self._runs.get(rel)
        if cached is not None:
            run, cached_inode = cached
            if cached_inode == inode:
                try:
                    run.refresh()
                    return run
                except (GradscopeError, OSError):
                    pass  # the file changed under the handle: reopen it below
            self._runs.pop(rel, None)
            _close_quietly(run)
        try:
            run = open_run(path)
        except OSError as e:
            raise RunFileError(f"cannot read {rel}: {e}") from e
        self._runs[rel] = (run, inode)
        return run

    def close(self) -> None:
        """Close every cached run."""
        with self._lock:
            for run, _ in self._runs.values():
                _close_quietly(run)
            self._runs.clear()


def _close_quietly(run) -> None:
    """Close a run whose file may already be gone; a failure to close changes nothing here."""
    with contextlib.suppress(Exception):
        run.close()
