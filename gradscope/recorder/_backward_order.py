"""Depth positions of watched modules whose parameters are used without calling the module."""

from __future__ import annotations

import bisect

from torch import nn


class GradientArrivals:
    """When each watched module's parameter gradients first arrive in the backward pass.

    Some modules own parameters that the forward reads without calling the module:
    MultiheadAttention passes `out_proj.weight` to a functional kernel, a model adds
    `pos_embedding.weight` to its input, a head multiplies by an embedding's weight. Their
    forward hooks never run, so the order of first calls cannot place them. Their gradients
    do arrive in the backward pass, which runs in reverse: a gradient that arrives after layer
    C's and before the next called layer's belongs just before C in depth (MHA's `out_proj`
    lands between `self_attn` and the layer after it).

    Tensor hooks on the parameters note the arrivals until the depth order is fixed (the first
    step boundary), then come off.
    """

    def __init__(self, modules: list[nn.Module], sharded: list[bool]):
        self._first: dict[int, int] = {}  # module position -> order of its first arrival
        self._handles = []
        for position, module in enumerate(modules):
            if sharded[position]:
                continue  # FSDP: gradients reach the sharded parameters through no hook
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    self._handles.append(p.register_hook(self._note(position)))

    def _note(self, position: int):
        def hook(grad):
            self._first.setdefault(position, len(self._first))

        return hook

    def depth_order(self, called: list[int], n_modules: int) -> list[int]:
        """Module positions in depth order: `called` (positions in order of first call) with
        each uncalled module whose gradient arrived placed before the called module whose
        gradient arrived last before its own (after all called ones if none did), and the
        modules that were neither called nor received a gradient at the end."""
        is_called = set(called)
        uncalled = [i for i in range(n_modules) if i not in is_called]
        arrived = sorted((i for i in uncalled if i in self._first), key=self._first.get)
        anchors = sorted((i for i in called if i in self._first), key=self._first.get)
        times = [self._first[c] for c in anchors]
        before: dict[int | None, list[int]] = {}  # called position (None: the end) -> uncalled
        for i in arrived:
            k = bisect.bisect_left(times, self._first[i])  # called ones that arrived earlier
            # a later arrival is nearer the input: it goes first in depth order
            before.setdefault(anchors[k - 1] if k else None, []).insert(0, i)
        order = []
        for c in called:
            order += before.get(c, []) + [c]
        order += before.get(None, [])
        return order + [i for i in uncalled if i not in self._first]

    def remove(self) -> None:
        """Take the hooks off the parameters."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
