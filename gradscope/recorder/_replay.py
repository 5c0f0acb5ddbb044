"""The replay of a captured step with checks on every watched module, and what it found."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from gradscope._origin import REPLAY_PHASES
from gradscope.recorder._stats import floating_tensors
from gradscope.recorder._step_capture import CapturedPass, RngState


@dataclass
class CallCheck:
    """One call of a watched module in a replayed forward pass."""

    position: int  # the watched module's position
    index: int  # its place in the pass's forward order
    occurrence: int  # how many calls of the same module came before it in the pass
    inputs_finite: bool
    output_finite: bool | None = None  # None until the call returns
    grad_finite: bool | None = None  # None: no gradient reached its outputs
    arrival: int | None = None  # when its output gradient came, in the pass's backward order


@dataclass
class PassCheck:
    """What the checks saw in one replayed forward and backward pass."""

    input_finite: bool
    calls: list[CallCheck] = field(default_factory=list)
    outputs_finite: bool = True
    output_grads_finite: bool = True
    bad_parameters: list[int] = field(default_factory=list)  # layers, backward order


@dataclass
class Finding:
    """Where the replay on this rank placed the first non-finite value."""

    micro_batch: int  # 0-based pass
    phase: str
    call_index: int  # its place in the pass's forward order (len(calls): after the last)
    position: int | None = None  # the watched module named
    occurrence: int | None = None  # which of that module's calls in the pass
    neighbour: int | None = None  # the watched module next to it that the sentence names
    unwatched: bool = False

    def key(self, rank: int) -> tuple:
        """Earlier in the step sorts first; among ranks, the lowest."""
        return (self.micro_batch, REPLAY_PHASES.index(self.phase), self.call_index, rank)


@contextlib.contextmanager
def preserved(root: nn.Module, params: list[torch.nn.Parameter], device: torch.device):
    """Within: parameters have no gradient. After: every gradient (the same tensors), buffer
    (BatchNorm running statistics) and generator state is what it was before."""
    grads = [(p, p.grad) for p in params]
    buffers = [(b, b.detach().clone()) for b in root.buffers()]
    rng = RngState.now(device)
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for p, grad in grads:
            p.grad = grad
        rng.restore()


class ReplayChecks:
    """Checks on every watched module during a replay: finite inputs and output in forward
    order, finite output gradients in backward order, finite parameter gradients."""

    def __init__(self, modules: list[nn.Module]):
        self._modules = modules
        self.current: PassCheck | None = None
        self._open: dict[int, list[CallCheck]] = {}  # position -> its calls not returned yet
        self._seen: dict[int, int] = {}  # position -> calls in this pass
        self._arrivals = 0
        self._handles = []
        for position, module in enumerate(modules):
            self._handles.append(
                module.register_forward_pre_hook(self._before(position), with_kwargs=True)
            )
            self._handles.append(
                module.register_forward_hook(self._after(position), with_kwargs=True)
            )

    def run(self, captured: CapturedPass) -> PassCheck:
        """Replay one captured call (forward, then backward with the gradients it had)."""
        check = PassCheck(input_finite=all_finite((captured.args, captured.kwargs)))
        self.current, self._open, self._seen, self._arrivals = check, {}, {}, 0
        had_bad = self._bad_parameter_layers()
        tensors, pairs = forward_again(captured)
        check.outputs_finite = all_finite(tensors)
        check.output_grads_finite = all_finite([g for _, g in pairs])
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        del tensors, pairs
        first_arrival = {}
        for call in check.calls:
            if call.arrival is not None:
                first_arrival.setdefault(call.position, call.arrival)
        new = [p for p in self._bad_parameter_layers() if p not in had_bad]
        check.bad_parameters = sorted(new, key=lambda p: first_arrival.get(p, self._arrivals))
        return check

    def remove(self) -> None:
        """Take the checks off."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _before(self, position: int):
        def hook(module, args, kwargs):
            if in_backward():  # a recomputation (activation checkpointing), not a new call
                return
            calls = self.current.calls
            occurrence = self._seen.get(position, 0)
            self._seen[position] = occurrence + 1
            call = CallCheck(position, len(calls), occurrence, all_finite((args, kwargs)))
            calls.append(call)
            self._open.setdefault(position, []).append(call)

        return hook

    def _after(self, position: int):
        def hook(module, args, kwargs, output):
            if in_backward() or not self._open.get(position):
                return
            call = self._open[position].pop()
            tensors = floating_tensors(output)
            call.output_finite = all_finite(tensors)
            for t in tensors:
                if t.requires_grad:
                    t.register_hook(self._on_gradient(call))

        return hook

    def _on_gradient(self, call: CallCheck):
        def hook(grad):
            if call.arrival is None:
                call.arrival = self._arrivals
                self._arrivals += 1
            finite = all_finite([grad])
            call.grad_finite = finite if call.grad_finite is None else call.grad_finite and finite

        return hook

    def _bad_parameter_layers(self) -> list[int]:
        return [
            position
            for position, module in enumerate(self._modules)
            if not all_finite([p.grad for p in module.parameters(recurse=False)])
        ]


def forward_again(captured: CapturedPass) -> tuple[list[torch.Tensor], list[tuple]]:
    """Run a captured call again as it ran (generator state, autocast): its floating outputs,
    and the (output, gradient) pairs of the outputs a gradient reached in the original."""
    captured.rng.restore()
    with captured.autocast.context(), torch.enable_grad():
        output = captured.module(*captured.args, **captured.kwargs)
    tensors = floating_tensors(output)
    pairs = [
        (tensors[i], grad)
        for i, grad in sorted(captured.grads.items())
        if i < len(tensors) and tensors[i].requires_grad
    ]
    return tensors, pairs


def first_finding(checks: list[PassCheck]) -> Finding | None:
    """The earliest place, pass by pass and phase by phase, where a value turned non-finite."""
    for k, check in enumerate(checks):
        found = _in_pass(k, check)
        if found is not None:
            return found
    return None


def _in_pass(k: int, check: PassCheck) -> Finding | None:
    calls = check.calls
    after_all = len(calls)
    if not check.input_finite:
        return Finding(k, "input", -1)
    made = next((c for c in calls if c.inputs_finite and c.output_finite is False), None)
    if made is not None:
        return Finding(k, "forward", made.index, made.position, made.occurrence)
    if not check.outputs_finite or any(c.output_finite is False for c in calls):
        # every non-finite output had a non-finite input: an unwatched operation made it
        fed = next((c for c in calls if not c.inputs_finite), None)
        if fed is not None:
            before = calls[fed.index - 1].position if fed.index else None
            return Finding(k, "forward", fed.index, fed.position, None, before, unwatched=True)
        last = calls[-1].position if calls else None
        return Finding(k, "forward", after_all, None, None, last, unwatched=True)
    if not check.output_grads_finite:
        return Finding(k, "loss", after_all)
    arrived = sorted((c for c in calls if c.arrival is not None), key=lambda c: c.arrival)
    bad = next((c for c in arrived if c.grad_finite is False), None)
    if bad is not None:
        if bad.index + 1 < len(calls):
            culprit = calls[bad.index + 1]
            return Finding(
                k, "backward", culprit.index, culprit.position, culprit.occurrence, bad.position
            )
        return Finding(k, "backward", after_all, None, None, bad.position, unwatched=True)
    if check.bad_parameters:
        position = check.bad_parameters[0]
        call = min(
            (c for c in calls if c.position == position),
            key=lambda c: (c.arrival is None, c.arrival or 0),
            default=None,
        )
        index = call.index if call is not None else after_all
        occurrence = call.occurrence if call is not None else None
        return Finding(k, "parameter_gradient", index, position, occurrence)
    return None


def all_finite(values) -> bool:
    """Whether every floating tensor in `values` (nested tuples, lists, dicts) is finite."""
    return all(bool(torch.isfinite(t).all()) for t in floating_tensors(values))


def in_backward() -> bool:
    """Whether autograd is running a backward pass in this thread now."""
    return torch._C._current_graph_task_id() != -1
