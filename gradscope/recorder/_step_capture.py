"""What a step's replay needs, held by reference: the model's forward calls and their gradients."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from gradscope.recorder._stats import floating_tensors


@dataclass
class RngState:
    """The CPU generator's state and the model device's, taken before a forward."""

    cpu: torch.Tensor
    device: torch.device
    device_state: torch.Tensor | None

    @classmethod
    def now(cls, device: torch.device) -> RngState:
        """The states at this moment (a copy of the CPU one: about 5 KB)."""
        module = _device_module(device)
        state = module.get_rng_state(device) if module is not None else None
        return cls(torch.get_rng_state(), device, state)

    def restore(self) -> None:
        """Put the generators back in this state."""
        torch.set_rng_state(self.cpu)
        if self.device_state is not None:
            _device_module(self.device).set_rng_state(self.device_state, self.device)


def _device_module(device: torch.device):
    """torch.cuda (or another accelerator's module) for a device whose generator we keep."""
    if device.type == "cpu":
        return None
    module = getattr(torch, device.type, None)
    return module if hasattr(module, "get_rng_state") else None


@dataclass
class AutocastState:
    """Whether autocast was on for the CPU and the model's device, and in which dtype."""

    modes: tuple[tuple[str, bool, torch.dtype], ...]

    @classmethod
    def now(cls, device: torch.device) -> AutocastState:
        """The autocast modes in force at this moment."""
        types = dict.fromkeys(("cpu", device.type))
        return cls(
            tuple((t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)) for t in types)
        )

    def context(self) -> contextlib.ExitStack:
        """A context that sets these modes again (on or off)."""
        stack = contextlib.ExitStack()
        for device_type, enabled, dtype in self.modes:
            stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled))
        return stack


@dataclass
class CapturedPass:
    """One forward call of a model entry (usually the root) with gradients enabled."""

    module: nn.Module
    args: tuple
    kwargs: dict
    rng: RngState
    autocast: AutocastState
    grads: dict[int, torch.Tensor] = field(default_factory=dict)  # output index -> its gradient

    @property
    def backpropagated(self) -> bool:
        """A backward pass reached its outputs."""
        return bool(self.grads)


class StepCapture:
    """References to the forward calls of the step in progress and to the gradients that
    reached their outputs, for a replay: nothing is copied but a generator state per call.

    What is captured is each call of a model *entry*: a module called from outside any other
    module's forward (the root, or a child the training code calls itself, as a Lightning
    `training_step` calling `self.net(x)`). Until the first step is done, the root and every
    module on the way from it to a watched module listen; after it (`settle`) only those that
    were entries do. When an output is a 0-dim tensor (a loss the model returns), only 0-dim
    outputs keep their gradient, so a model returning its loss holds scalars only.

    Inside code that torch.compile traces, the hooks do nothing (no op, no graph break): a
    compiled model's calls are captured by the hooks of its eager wrappers (`outer`: the
    `torch.compile` or DDP module the recorder was attached to), each call kept as a call of
    the module inside them (`root`), which a replay runs eagerly.
    """

    def __init__(
        self,
        candidates: list[nn.Module],
        device: torch.device,
        outer: list[tuple[nn.Module, nn.Module]] = (),
    ):
        self.device = device
        self.passes: list[CapturedPass] = []
        self.paused = False  # set during a replay: its own calls are not captured
        self._depth = 0  # entry calls in progress
        self._entries: set[int] = set()  # ids of candidates called as entries
        self._entry_of_last_pass: int | None = None  # the id of the module it was a call of
        self._handles: dict[int, list] = {}
        for wrapper, inner in outer:
            self._listen(wrapper, replayed=inner)
        for module in candidates:
            self._listen(module)

    def settle(self) -> None:
        """Keep listening only on the modules that were entries (once a step has seen one)."""
        if not self._entries:
            return
        for key in [k for k in self._handles if k not in self._entries]:
            for handle in self._handles.pop(key):
                handle.remove()

    def drop_backpropagated(self) -> None:
        """Forget the calls whose backward has run (zero_grad is wiping their gradients)."""
        self.passes = [p for p in self.passes if not p.backpropagated]

    def clear(self) -> None:
        """Forget every call (the step is over)."""
        self.passes = []

    def remove(self) -> None:
        """Take every hook off."""
        for handles in self._handles.values():
            for handle in handles:
                handle.remove()
        self._handles.clear()
        self.passes = []

    def _listen(self, module: nn.Module, replayed: nn.Module | None = None) -> None:
        """Hooks on `module` that capture its calls as entry calls (of `replayed`, when the
        module is a wrapper whose calls a replay runs as calls of the module inside it)."""
        key = id(module)

        def before(mod, args, kwargs):
            if torch.compiler.is_compiling():
                return  # traced code: its eager wrapper captures the call
            self._depth += 1
            if self._depth == 1 and not self.paused and torch.is_grad_enabled():
                self._entries.add(key)
                rng, autocast = RngState.now(self.device), AutocastState.now(self.device)
                target = mod if replayed is None else replayed
                self.passes.append(CapturedPass(target, args, kwargs, rng, autocast))
                self._entry_of_last_pass = key

        def after(mod, args, kwargs, output):
            if torch.compiler.is_compiling():
                return
            self._depth -= 1
            if self._depth == 0 and self.passes and self._entry_of_last_pass == key:
                self._keep_output_grads(self.passes[-1], output)

        # prepended: the recorder's own hook stays the last one on a watched module
        self._handles[key] = [
            module.register_forward_pre_hook(before, with_kwargs=True, prepend=True),
            module.register_forward_hook(after, with_kwargs=True, prepend=True, always_call=True),
        ]

    def _keep_output_grads(self, captured: CapturedPass, output) -> None:
        if self.paused or output is None:
            return
        tensors = floating_tensors(output)
        if any(t.dim() == 0 and t.requires_grad for t in tensors):  # the model returns its loss
            chosen = [(i, t) for i, t in enumerate(tensors) if t.dim() == 0]
        else:
            chosen = list(enumerate(tensors))
        for i, t in chosen:
            if t.requires_grad:
                t.register_hook(_grad_keeper(captured, i))


def _grad_keeper(captured: CapturedPass, index: int):
    def keep(grad: torch.Tensor) -> None:
        held = captured.grads.get(index)
        captured.grads[index] = grad if held is None else held + grad

    return keep


def entry_candidates(root: nn.Module, watched: list[nn.Module]) -> list[nn.Module]:
    """The root and every module on the way from it to a watched module (parents first)."""
    wanted = {id(m) for m in watched}
    chosen: dict[int, nn.Module] = {}

    def walk(module: nn.Module) -> bool:
        below = [walk(child) for child in module.children()]
        on_path = id(module) in wanted or any(below)
        if on_path:
            chosen[id(module)] = module
        return on_path

    walk(root)
    chosen[id(root)] = root
    return list(chosen.values())[::-1]


def eager_wrappers(model: nn.Module, root: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(wrapper, root) for the outermost wrapper around `root` (torch.compile's, DDP's) that
    the recorder was attached to: its hooks run eagerly around a compiled forward."""
    return [] if model is root else [(model, root)]
