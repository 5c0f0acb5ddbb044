"""Detection of a non-finite gradient or weight: one flag per step, a few multi-tensor ops."""

from __future__ import annotations

import torch

from gradscope.recorder._wrappers import local_part


class NonFiniteCheck:
    """Whether any gradient or weight of `params` holds an inf or NaN, as one flag.

    The check is the GradScaler's own kernel (`torch._amp_foreach_non_finite_check_and_unscale_`,
    with a scale of 1, which leaves every value as it was): one multi-tensor op over the
    gradients and weights of each (device, dtype) group that sets a flag tensor. A step costs
    that op, the flag's reset, under torch.distributed a MAX of the flag across ranks (so every
    rank decides alike), and one read of the flag: nothing per layer.
    """

    def __init__(self, params: list[torch.nn.Parameter], reduce_across_ranks: bool):
        self._reduce = reduce_across_ranks
        params = _unique(params)
        groups: dict[tuple, list[torch.nn.Parameter]] = {}
        for p in params:
            groups.setdefault((p.device, p.dtype), []).append(p)
        self._groups = list(groups.values())
        self._sharded = any(local_part(p) is not p for p in params)  # FSDP2 DTensors
        devices = {device for device, _ in groups}
        self._flags = {d: torch.zeros(1, dtype=torch.float32, device=d) for d in devices}
        self._ones = {d: torch.ones(1, dtype=torch.float32, device=d) for d in devices}

    def any_nonfinite(self, weights: bool = True) -> bool:
        """Whether a gradient (and, with `weights`, a weight) holds an inf or NaN now, on any
        rank. Every rank must call it at the same points (it holds a collective)."""
        for flag in self._flags.values():
            flag.zero_()
        with torch.no_grad():
            for params in self._groups:
                grads = [_dense(g) for p in params if (g := p.grad) is not None]
                if weights:  # in place under no_grad, as an optimizer writes them
                    grads += [local_part(p) for p in params] if self._sharded else params
                if grads:
                    device = params[0].device
                    torch._amp_foreach_non_finite_check_and_unscale_(
                        grads, self._flags[device], self._ones[device]
                    )
        found = False
        for flag in self._flags.values():
            if self._reduce:
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            found = found or bool(flag.item())  # note: the step's one host sync
        return found


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
