"""Training progress: a bar on a terminal, a line now and then when the output is a log file."""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

from gradscope.errors import UsageError

INTERVAL_ENV = "GRADSCOPE_PROGRESS_SECONDS"  # seconds between progress lines in a log file
DEFAULT_INTERVAL = 30.0


def line_interval() -> float:
    """Seconds between progress lines: $GRADSCOPE_PROGRESS_SECONDS, else DEFAULT_INTERVAL."""
    text = os.environ.get(INTERVAL_ENV)
    if text is None:
        return DEFAULT_INTERVAL
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UsageError(f"${INTERVAL_ENV} must be a number of seconds >= 0, got {text!r}")
    return seconds


def on_terminal() -> bool:
    """True when both stdout and stderr are terminals: a bar redrawn in place reads well.
    Under a scheduler, or piped, they are files: a carriage-return bar fills them with
    updates, so progress comes as lines instead."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def training_progress(name: str, step: int, total: int, enabled: bool):
    """The progress display of one model's training: a tqdm bar on a terminal, ProgressLines
    otherwise, nothing when not `enabled`."""
    if enabled and not on_terminal():
        return ProgressLines(name, step, total, line_interval())
    return ProgressBar(name, step, total, enabled)


def evaluation_bar(desc: str, images: int, enabled: bool):
    """A bar over one evaluation's images, on a terminal only (elsewhere a no-op bar)."""
    return tqdm(
        total=images,
        desc=desc,
        unit="img",
        leave=False,
        disable=not (enabled and on_terminal()),
        dynamic_ncols=True,
    )


class ProgressBar:
    """tqdm's bar on stderr (disabled: shows nothing)."""

    def __init__(self, name: str, step: int, total: int, enabled: bool):
        self._bar = tqdm(
            total=total,
            initial=step,
            desc=name,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
        )

    def step(self, loss: float, error: float) -> None:
        """One training step done."""
        self._bar.set_postfix(loss=f"{loss:.3f}", err=f"{error:.3f}", refresh=False)
        self._bar.update()

    def evaluating(self) -> None:
        """An evaluation starts."""
        self._bar.set_postfix_str("evaluating", refresh=True)

    def evaluated(self, loss: float, error: float, test_error: float, images: int) -> None:
        """An evaluation ended (after the training step with `loss` and `error`)."""
        self._bar.set_postfix(loss=f"{loss:.3f}", err=f"{error:.3f}", test_err=f"{test_error:.3f}")

    def close(self) -> None:
        """Training stopped (finished, paused or interrupted)."""
        self._bar.close()


class ProgressLines:
    """Progress as lines on stdout: after the first step, then every `interval` seconds, after
    each evaluation and at the end: steps, rate, the mean loss and error since the last line,
    the latest test error, the time left."""

    def __init__(self, name: str, step: int, total: int, interval: float):
        self.name, self.total, self.interval = name, total, interval
        self._step = step
        self._test_error: float | None = None
        self._printed = False  # the first step prints at once: the run is alive
        self._since()

    def _since(self) -> None:
        """Start a new window of steps for the next line."""
        self._last_time = time.monotonic()
        self._last_step = self._step
        self._loss_sum = self._error_sum = 0.0

    def step(self, loss: float, error: float) -> None:
        """One training step done: a line if it is the first or the interval has passed."""
        self._step += 1
        self._loss_sum += loss
        self._error_sum += error
        if not self._printed or time.monotonic() - self._last_time >= self.interval:
            self._print()

    def evaluating(self) -> None:
        """An evaluation starts (nothing to print until it ends)."""

    def evaluated(self, loss: float, error: float, test_error: float, images: int) -> None:
        """An evaluation ended: a line with its figures."""
        self._test_error = test_error
        self._emit(f"evaluated on {images:,} test images: test err {100 * test_error:.2f}%")

    def close(self) -> None:
        """Training stopped: a last line for the steps since the last one."""
        if self._step > self._last_step:
            self._print()

    def _print(self) -> None:
        steps = self._step - self._last_step
        seconds = max(time.monotonic() - self._last_time, 1e-9)
        rate = steps / seconds
        parts = [
            f"{100 * self._step / self.total:.1f}%",
            f"{rate:.2f} steps/s",
            f"loss {self._loss_sum / steps:.4f}",
            f"err {100 * self._error_sum / steps:.2f}%",
        ]
        if self._test_error is not None:
            parts.append(f"test err {100 * self._test_error:.2f}%")
        if self._step < self.total:
            parts.append(f"eta {_duration((self.total - self._step) / rate)}")
        self._emit("  ".join(parts))
        self._printed = True
        self._since()

    def _emit(self, text: str) -> None:
        print(f"{self.name} step {self._step:,}/{self.total:,}  {text}", flush=True)


def _duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
