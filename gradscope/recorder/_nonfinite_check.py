"""Detection of a non-finite gradient or weight: one flag per step, a few multi-tensor ops."""

from __future__ import annotations

import math

import torch

from gradscope.recorder._wrappers import local_part

INF = float("inf")


class NonFiniteCheck:
    """Whether any gradient or weight of `params` holds an inf or NaN, as one flag.

    Read-only: one multi-tensor 2-norm (`torch._foreach_norm`, which an inf or a NaN anywhere in a
    tensor makes non-finite) over the gradients and weights of each (device, dtype) group, the
    largest of those norms, and one read of it. A 2-norm can also overflow on large finite
    values, so a non-finite one is confirmed by max-norms (max |x|, which overflows never) before
    the flag is raised: that second pass runs only on a step the first flags. (The max-norm
    alone would do, but on CPU torch takes a slow path for it: 8x the 2-norm's time.) Nothing is
    written, so no parameter's version counter moves (a graph still to be backpropagated through
    a watched module the optimizer does not step stays valid). Under torch.distributed a MAX of
    the flag across ranks makes every rank decide alike. Nothing per layer.
    """

    def __init__(self, params: list[torch.nn.Parameter], reduce_across_ranks: bool, device):
        self._reduce = reduce_across_ranks
        self._device = torch.device(device)  # where the flag meets the other ranks' flags
        params = _unique(params)
        groups: dict[tuple, list[torch.nn.Parameter]] = {}
        for p in params:
            groups.setdefault((p.device, p.dtype), []).append(p)
        self._groups = list(groups.values())
        self._sharded = any(local_part(p) is not p for p in params)  # FSDP2 DTensors

    def any_nonfinite(self, weights: bool = True) -> bool:
        """Whether a gradient (and, with `weights`, a weight) holds an inf or NaN now, on any
        rank. Every rank must call it at the same points (it holds a collective)."""
        with torch.no_grad():
            groups = self._tensor_groups(weights)
            if not self._flagged(groups, 2):
                return False
            return self._flagged(groups, INF)  # a 2-norm overflowed, or a value is inf/NaN

    def _tensor_groups(self, weights: bool) -> list[list[torch.Tensor]]:
        """The tensors to check, one list per (device, dtype) group."""
        groups = []
        for params in self._groups:
            tensors = [_dense(g) for p in params if (g := p.grad) is not None]
            if weights:
                tensors += [local_part(p) for p in params] if self._sharded else params
            tensors = [t for t in tensors if t.numel()]
            if tensors:
                groups.append(tensors)
        return groups

    def _flagged(self, groups: list[list[torch.Tensor]], order: float) -> bool:
        """Whether a `order`-norm of some tensor is non-finite, on any rank: one read."""
        worst: dict[torch.device, list[torch.Tensor]] = {}
        for tensors in groups:
            norms = torch._foreach_norm(tensors, order)  # NaN and inf propagate
            worst.setdefault(tensors[0].device, []).extend(norms)
        largest = [torch.stack(norms).amax().to(self._device) for norms in worst.values()]
        if not self._reduce:
            # note: the step's one host sync (a read per device, where the model spans several)
            return any(not math.isfinite(value.item()) for value in largest)
        # one collective on every rank, whatever it holds; a flag, not the value: a MAX may
        # drop a NaN
        flag = torch.zeros(1, device=self._device)
        for value in largest:
            flag = torch.maximum(flag, value.isfinite().logical_not().float())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())  # note: the step's one host sync


def _dense(grad: torch.Tensor) -> torch.Tensor:
    """The values to check of a gradient: its local shard, or a sparse one's stored values."""
    grad = local_part(grad)
    return grad._values() if grad.is_sparse else grad


def _unique(params) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
