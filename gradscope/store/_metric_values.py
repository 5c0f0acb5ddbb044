"""Metric values as a run file stores them: one real number each (inf and NaN included)."""

import numbers

from gradscope.errors import UsageError

ACCEPTED = (
    "a real number: a Python or NumPy int or float, or a one-element tensor or array "
    "(inf and NaN are stored as they are)"
)


def check_metric(name, value) -> None:
    """Raise UsageError, saying what a metric may be, unless `value` is one real number.

    Reads no tensor's value (no host sync), so a one-element tensor's type is checked by
    `metric_value`, which reads it.
    """
    if _is_container(value):
        count = _element_count(value)
        if count != 1:
            raise UsageError(
                f"metric {name!r} must be {ACCEPTED}; got a {type(value).__name__} of "
                f"{count} elements"
            )
    elif not isinstance(value, numbers.Real):
        raise UsageError(f"metric {name!r} must be {ACCEPTED}; got {_shown(value)}")


def metric_value(name, value) -> float:
    """`value` as a float, checked by `check_metric` (a tensor is read with `.item()`: on a GPU
    that waits for the device)."""
    check_metric(name, value)
    if _is_container(value):
        value = value.item()
        if not isinstance(value, numbers.Real):  # a complex or non-numeric element
            raise UsageError(f"metric {name!r} must be {ACCEPTED}; got {_shown(value)}")
    return float(value)


def _is_container(value) -> bool:
    """A tensor or an array (NumPy scalars are numbers.Number already)."""
    return not isinstance(value, numbers.Number) and callable(getattr(value, "item", None))


def _element_count(value) -> int:
    """Elements of a tensor (numel()) or an array (size)."""
    numel = getattr(value, "numel", None)
    return int(numel() if callable(numel) else value.size)


def _shown(value) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"
