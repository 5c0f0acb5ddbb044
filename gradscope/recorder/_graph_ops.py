"""The recorder inside torch.compile: opaque graph ops that run its host code at run time."""

from __future__ import annotations

import itertools
import weakref
from typing import Protocol

import torch

from gradscope.recorder import _stats as S

# Two ops of the "gradscope" namespace, opaque to dynamo, AOTAutograd and inductor: in a
# compiled graph each is one call into the recorder's own Python, made where the hook would
# have run in eager mode, with the tensors it would have seen (no copy, no reduction in the
# graph). Ordered effects: they are neither dropped (they return nothing) nor reordered.
# cudagraph_unsafe: a CUDA graph replays kernels, not Python, so under mode="reduce-overhead"
# inductor splits a graph with these ops into CUDA graphs between them (graph partitions).
_LIBRARY = torch.library.Library("gradscope", "DEF")
_TAGS = (torch.Tag.cudagraph_unsafe,)
_LIBRARY.define("observe_outputs(Tensor[] outputs, int recorder, int position) -> ()", tags=_TAGS)
_LIBRARY.define(
    "observe_output_grad(Tensor grad, int recorder, int position, int slot) -> ()", tags=_TAGS
)


class GraphObserver(Protocol):
    """What the ops call: a recorder, at run time, once per watched call and output gradient."""

    def _observe_outputs(self, outputs: list[torch.Tensor], position: int) -> None: ...

    def _observe_output_grad(self, grad: torch.Tensor, position: int, slot: int) -> None: ...


_OBSERVERS: weakref.WeakValueDictionary[int, GraphObserver] = weakref.WeakValueDictionary()
_keys = itertools.count()


def register(observer: GraphObserver) -> int:
    """The key by which compiled graphs reach `observer` (a new one each time: never reused)."""
    key = next(_keys)
    _OBSERVERS[key] = observer
    return key


def unregister(key: int) -> None:
    """Graphs still holding `key` reach nobody from now on (their ops do nothing)."""
    _OBSERVERS.pop(key, None)


def _observe_outputs(outputs: list[torch.Tensor], recorder: int, position: int) -> None:
    observer = _OBSERVERS.get(recorder)
    if observer is not None:
        observer._observe_outputs(outputs, position)


def _observe_output_grad(grad: torch.Tensor, recorder: int, position: int, slot: int) -> None:
    observer = _OBSERVERS.get(recorder)
    if observer is not None:
        observer._observe_output_grad(grad, position, slot)


def _returns_nothing(*args) -> None:
    return None


def _register_ops() -> None:
    from torch._higher_order_ops.effects import _EffectType, _register_effectful_op

    for name, impl in (
        ("observe_outputs", _observe_outputs),
        ("observe_output_grad", _observe_output_grad),
    ):
        _LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"gradscope::{name}", _returns_nothing, lib=_LIBRARY)
        _register_effectful_op(getattr(torch.ops.gradscope, name).default, _EffectType.ORDERED)


_register_ops()


class OutputProbe(torch.autograd.Function):
    """The identity on a watched output, whose backward hands the output's gradient to the
    recorder (`observe_output_grad`): a tensor hook's work, inside the compiled backward.

    The forward returns a copy, not the input itself: autograd forbids in-place ops on a
    custom Function's view of its input (`out += identity`, `ReLU(inplace=True)` after the
    module), and inductor fuses the copy away where nothing needs it.
    """

    @staticmethod
    def forward(ctx, output: torch.Tensor, recorder: int, position: int, slot: int):
        ctx.recorder, ctx.position, ctx.slot = recorder, position, slot
        return output.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        torch.ops.gradscope.observe_output_grad(grad, ctx.recorder, ctx.position, ctx.slot)
        return grad, None, None, None


def observe_in_graph(output, recorder: int, position: int, probe: bool):
    """What a watched module's forward hook puts into a graph dynamo traces: one op that hands
    the call's floating outputs to the recorder, and with `probe` each output that requires
    grad passed through `OutputProbe`. Returns the output to use in place of the module's."""
    tensors = S.floating_tensors(output)
    torch.ops.gradscope.observe_outputs(tensors, recorder, position)
    if not probe:
        return output

    slots = itertools.count()  # map_floating walks the outputs in floating_tensors' order

    def probed(t: torch.Tensor) -> torch.Tensor:
        slot = next(slots)
        return OutputProbe.apply(t, recorder, position, slot) if t.requires_grad else t

    return S.map_floating(output, probed)
