"""Putting a model back as it was after a probe: weights, buffers, gradients, modes, RNG."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn


@contextlib.contextmanager
def left_as_it_was(model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Inside, the probe may train `model`; on the way out (also on an error) its parameters,
    buffers, gradients (the same tensors, untouched: the probe's gradients are its own),
    train/eval modes, torch's random number generators and `optimizer`'s state are restored."""
    params = list(model.parameters())
    buffers = list(model.buffers())
    values = [t.detach().clone() for t in params + buffers]
    grads = [p.grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    saved_optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    devices = sorted({t.device.index or 0 for t in params + buffers if t.device.type == "cuda"})
    try:
        for p in params:
            p.grad = None
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for tensor, value in zip(params + buffers, values, strict=True):
                tensor.copy_(value)
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        for module, training in modes:
            module.training = training
        if optimizer is not None:
            optimizer.load_state_dict(saved_optimizer)
