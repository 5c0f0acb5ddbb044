"""The culprit module run alone, op by op: the first ATen op that made a non-finite value."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from gradscope._origin import PYTHON_NUMBER, OpCulprit
from gradscope.recorder._replay import forward_again, in_backward
from gradscope.recorder._stats import floating_tensors
from gradscope.recorder._step_capture import AutocastState, CapturedPass, RngState


class FirstNonFiniteOp(TorchDispatchMode):
    """Runs every ATen op as it is and keeps the first whose output holds an inf or NaN, with
    the dtype, shape and largest magnitude of each of its floating tensor inputs."""

    def __init__(self):
        super().__init__()
        self.found: OpCulprit | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.found is None and not _all_finite(tree_leaves(out)):
            leaves = tree_leaves((args, kwargs))
            inputs = [_describe(t) for t in leaves if _floating(t)]
            inputs += [(PYTHON_NUMBER, (), abs(v)) for v in leaves if isinstance(v, float)]
            self.found = OpCulprit(f"{func.namespace}.{func._opname}", inputs)
        return out


@dataclass
class CulpritCall:
    """One call of the culprit module as it was made in the replay: inputs (copied when the
    call began), keyword arguments, generator state and autocast, and its output gradients."""

    args: tuple
    kwargs: dict
    rng: RngState
    autocast: AutocastState
    grads: dict[int, torch.Tensor]


def culprit_op(
    captured: CapturedPass, module: nn.Module, occurrence: int, backward: bool
) -> OpCulprit | None:
    """The first op of `module` that made a non-finite value in its `occurrence`-th call of
    the pass `captured`: in its forward, or (`backward`) in its backward from the output
    gradient it got. None when the module run alone comes out finite."""
    call = _call_again(captured, module, occurrence, backward)
    if call is None:
        return None
    probe = FirstNonFiniteOp()
    call.rng.restore()
    with call.autocast.context(), torch.enable_grad():
        if not backward:
            with probe:
                module(*call.args, **call.kwargs)
            return probe.found
        tensors = floating_tensors(module(*call.args, **call.kwargs))
    pairs = [(tensors[i], g) for i, g in call.grads.items() if tensors[i].requires_grad]
    for p in module.parameters():
        p.grad = None  # the probe sees the module's own gradients, not sums with the replay's
    if pairs:
        with probe:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    return probe.found


class _Reached(Exception):
    """Stops a forward pass once the culprit call's inputs are in hand."""


def _call_again(
    captured: CapturedPass, module: nn.Module, occurrence: int, backward: bool
) -> CulpritCall | None:
    """Replay the pass up to the culprit call (and, for `backward`, its backward pass too)."""
    seen = 0
    found: dict = {}

    def before(mod, args, kwargs):
        nonlocal seen
        if in_backward():
            return
        if seen == occurrence:
            found["call"] = CulpritCall(
                _copy_inputs(args),
                _copy_inputs(kwargs),
                RngState.now(captured.rng.device),
                captured.autocast,
                {},
            )
            found["open"] = True
            if not backward:
                raise _Reached
        seen += 1

    def after(mod, args, kwargs, output):
        if in_backward() or not found.pop("open", False):
            return
        for i, t in enumerate(floating_tensors(output)):
            if t.requires_grad:
                t.register_hook(_keep(found["call"].grads, i))

    handles = [
        module.register_forward_pre_hook(before, with_kwargs=True),
        module.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        tensors, pairs = forward_again(captured)
        if backward and pairs and "call" in found:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found.get("call")


def _keep(grads: dict, index: int):
    def hook(grad):
        grads[index] = grad

    return hook


def _copy_inputs(values):
    """Floating tensors copied as they are now (later in-place ops must not change them), with
    their requires_grad; anything else as it is."""

    def copy(value):
        if _floating(value):
            return value.detach().clone().requires_grad_(value.requires_grad)
        return value

    return tree_map(copy, values)


def _floating(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _all_finite(values) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in values if _floating(t))


def _describe(t: torch.Tensor) -> tuple[str, tuple[int, ...], float]:
    absmax = float(t.detach().abs().max()) if t.numel() else 0.0
    return str(t.dtype).removeprefix("torch."), tuple(t.shape), absmax
