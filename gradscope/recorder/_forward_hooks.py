"""The watched modules' forward hooks, on every module for recorded steps and on one in between."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from gradscope.recorder._compiled_code import forget_compiled_code, frames_compiled_by_others


class ForwardHooks:
    """The recorder's forward hook on each watched module, there only while a step needs it.

    A module with a forward hook takes torch's slow call path, and its hook runs on every call:
    about 4 µs a call in a loop, and some 30 µs inside a training step whose kernels have
    evicted the caches, or 2% of a ResNet-56 step at batch 4. A step that is not recorded needs
    the hook of one module only (the first in depth order, so that the recorder knows a step is
    under way), so after a record the others come off (`only`) and before the next they go back
    on (`everywhere`).

    Hooks stay on for good (`pinned`) where coming and going would change what they see:
    - torch.compile does not see hooks added or removed after it compiled (dynamo skips the
      guards on module hooks): its code would miss hooks added later, or keep calling removed
      ones. So once anything but gradscope's own kernels has been compiled since attach, every
      hook stays, and code compiled while some were off is dropped once;
    - a forward hook registered on a watched module after ours runs after ours; ours, put
      back, would run after it, and see the output that hook may return in place of the
      module's.
    """

    def __init__(self, modules: list[nn.Module], hooks: list[Callable]):
        self._modules = modules
        self._hooks = hooks  # the forward hook of each module, by position
        self._handles: dict[int, object] = {}  # position -> handle of its registered hook
        self.pinned = False
        self._others_frames = frames_compiled_by_others()  # at attach (once moved: pinned)

    def everywhere(self) -> None:
        """Put every module's hook on (a step to record, or depth order still to learn)."""
        if len(self._handles) == len(self._modules):
            return
        if self._compiled_since_attach():
            self.pinned = True  # compiled while hooks were off: that code lacks them
            forget_compiled_code()
        for position in range(len(self._modules)):
            self._put_on(position)

    def only(self, position: int) -> None:
        """Leave the hook of the module at `position` alone on (unless pinned)."""
        if not self.pinned and (self._compiled_since_attach() or self._others_hook_after_ours()):
            self.pinned = True  # hooks may not come and go from now on
        if self.pinned:
            return
        for other in [p for p in self._handles if p != position]:
            self._handles.pop(other).remove()
        self._put_on(position)

    def _put_on(self, position: int) -> None:
        if position not in self._handles:
            module = self._modules[position]
            self._handles[position] = module.register_forward_hook(self._hooks[position])

    def _compiled_since_attach(self) -> bool:
        return frames_compiled_by_others() != self._others_frames

    def _others_hook_after_ours(self) -> bool:
        """Whether a module has a forward hook registered after ours: ours, put back, would run
        after it and see the output it may have replaced, where until then it saw the module's
        own."""
        return any(
            next(reversed(self._modules[position]._forward_hooks), None) != handle.id
            for position, handle in self._handles.items()
        )

    def remove(self) -> None:
        """Take every hook off (the recorder closes)."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
