"""Which device to run on: "auto" (CUDA when there is one), "cpu", "cuda" or "cuda:N"."""

import torch

from gradscope.errors import UsageError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec) -> torch.device:
    """The torch.device that `spec` (a name above or a torch.device) means on this machine.

    Raises UsageError for a malformed name, or a CUDA device this machine does not have.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {spec!r}: expected {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UsageError(f"device {spec}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"device {spec!r}: expected {DEVICE_CHOICES}")
    return device
