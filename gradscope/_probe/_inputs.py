"""What the probe feeds the model: its batches (given, or Gaussian) and the loss on them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gradscope.errors import UsageError


def infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    """One example's shape for a Gaussian batch: the model's `input_shape` attribute (the
    bundled CIFAR nets declare (3, 32, 32)), else (in_features,) when its first module with
    parameters is a Linear; anything else raises UsageError asking for input_shape=."""
    declared = getattr(model, "input_shape", None)
    if declared is not None:
        return check_shape(declared)
    first = next((m for m in model.modules() if next(m.parameters(False), None) is not None), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    if isinstance(first, nn.Embedding):
        raise UsageError(
            f"{type(model).__name__} starts with an Embedding, which takes token ids, not a "
            "Gaussian batch: pass batch=(ids, targets)"
        )
    kind = type(first).__name__ if first is not None else "no parameters"
    raise UsageError(
        f"cannot tell the input shape of {type(model).__name__} (its first layer is {kind}): "
        "pass input_shape=(...) for one example, e.g. (3, 32, 32), or batch="
    )


def check_shape(shape) -> tuple[int, ...]:
    """An example shape as a tuple of positive ints; UsageError otherwise."""
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise UsageError(f"input_shape must be a sequence of sizes, got {shape!r}") from None
    if (
        not dims
        or any(d < 1 for d in dims)
        or any(d != s for d, s in zip(dims, shape, strict=True))
    ):
        raise UsageError(f"input_shape must hold positive whole sizes, got {shape!r}")
    return dims


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from (seed, step): the same batch for a step at every width."""
    key = f"gradscope-probe/{seed}/{step}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    return torch.Generator().manual_seed(value)


class ProbeBatches:
    """The batch of each probe step: (inputs, targets or None), on the model's device.

    `batch` is None (Gaussian inputs N(0, 1) of `batch_size` x `input_shape`, drawn per step
    from the seed: the same at every width), a tensor of inputs or an (inputs, targets) pair
    (used at every step), or a callable step -> (inputs, targets) such as
    `gradscope.data.TrainBatches(...).batch`.
    """

    def __init__(self, batch, batch_size: int, input_shape, seed: int):
        if batch is None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
                raise UsageError(f"batch_size must be an int >= 2, got {batch_size!r}")
        elif not (callable(batch) or isinstance(batch, (torch.Tensor, tuple, list))):
            raise UsageError(
                "batch must be None (a Gaussian batch), a tensor, an (inputs, targets) pair or "
                f"a callable step -> (inputs, targets), got {type(batch).__name__}"
            )
        self._batch = batch
        self.batch_size = batch_size
        self.input_shape = None if input_shape is None else check_shape(input_shape)
        self.seed = seed

    @property
    def source(self) -> str:
        """Where the batches come from, in words for the probe file."""
        if self._batch is None:
            return "gaussian"
        return "callable" if callable(self._batch) else "given"

    def shape_for(self, model: nn.Module) -> tuple[int, ...]:
        """The example shape of a Gaussian batch for `model` (given, or inferred)."""
        return self.input_shape if self.input_shape is not None else infer_input_shape(model)

    def get(self, step: int, model: nn.Module, device) -> tuple[torch.Tensor, object]:
        """(inputs, targets or None) of probe step `step`, on `device`."""
        if self._batch is None:
            shape = (self.batch_size, *self.shape_for(model))
            x = torch.randn(shape, generator=step_generator(self.seed, step))
            return x.to(device), None
        got = self._batch(step) if callable(self._batch) else self._batch
        if isinstance(got, torch.Tensor):
            return got.to(device), None
        if isinstance(got, (tuple, list)) and len(got) == 2 and isinstance(got[0], torch.Tensor):
            x, y = got
            return x.to(device), (y.to(device) if isinstance(y, torch.Tensor) else y)
        raise UsageError(
            f"a probe batch must be a tensor or an (inputs, targets) pair, got {type(got).__name__}"
        )


def probe_loss(loss: Callable | None, output, target, seed: int, step: int) -> torch.Tensor:
    """The scalar loss of one probe step. Default: cross-entropy over the output's last
    dimension, against `target` or, without one, labels drawn uniformly from the seed (the
    same at every width)."""
    if loss is not None:
        value = loss(output, target)
    else:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            kind = type(output).__name__ if not isinstance(output, torch.Tensor) else "1-D tensor"
            raise UsageError(
                f"the model returns a {kind}: the default loss (cross-entropy over the last "
                "dimension) needs a [batch, ..., classes] tensor; pass loss=lambda output, "
                "target: ..."
            )
        logits = output.reshape(-1, output.shape[-1])
        if target is None:
            generator = step_generator(seed + 1, step)
            target = torch.randint(output.shape[-1], (logits.shape[0],), generator=generator)
        value = F.cross_entropy(logits, target.reshape(-1).to(output.device))
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise UsageError("loss must return a scalar tensor")
    return value.reshape(())
