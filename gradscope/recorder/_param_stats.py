"""Per-layer gradient and weight statistics, batched over a flat buffer of all parameters."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from gradscope.recorder._kernels import KernelChoice
from gradscope.recorder._stats import host_to_device
from gradscope.recorder._wrappers import local_part


class FlatLayout:
    """Where each of a set of parameters sits in one flat float32 buffer, equal sizes adjacent.

    Parameters with the same element count form a block, a [count, numel] view of the buffer, so
    a per-parameter reduction is one kernel per distinct size (a handful in a ResNet-1202 with
    3,600 parameters) instead of one per parameter. Per-parameter results come out in flat order
    and are summed into layers with index tensors kept on the device.
    """

    def __init__(self, params, pairs, n_layers: int, device):
        """`params`: (position, parameter) pairs to lay out; `pairs`: (position, layer) rows.

        A sharded parameter (an FSDP2 DTensor) is laid out by the shard this rank holds."""
        params = sorted(params, key=lambda item: local_part(item[1]).numel())  # ties keep order
        self.positions = tuple(position for position, _ in params)
        self.params = [p for _, p in params]  # in flat order
        self.shapes = [local_part(p).shape for _, p in params]
        sizes = [shape.numel() for shape in self.shapes]
        self.size = sum(sizes)
        # parameter p (in flat order) is flat[bounds[p]:bounds[p + 1]]
        self.bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.n_layers = n_layers
        self.blocks = []  # (offset, count, numel)
        offset = 0
        for numel, group in itertools.groupby(sizes):
            count = len(list(group))
            self.blocks.append((offset, count, numel))
            offset += count * numel
        slot = {position: i for i, position in enumerate(self.positions)}
        rows = [(slot[p], layer) for p, layer in pairs if p in slot]
        self.src = host_to_device([r[0] for r in rows], torch.long, device)
        self.dst = host_to_device([r[1] for r in rows], torch.long, device)
        self.numel = host_to_device(sizes, torch.float64, device)
        self._views: dict[int, list[torch.Tensor]] = {}

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of `flat` shaped like each parameter, in flat order.

        Cached per memory address: the cached views keep their storage alive, so no other
        buffer can be at that address while they are cached.
        """
        key = flat.data_ptr()
        if key not in self._views:
            if len(self._views) > 4:
                self._views.clear()
            views, offset = [], 0
            for shape in self.shapes:
                numel = shape.numel()
                views.append(flat[offset : offset + numel].view(shape))
                offset += numel
            self._views[key] = views
        return self._views[key]

    def per_param(self, flat: torch.Tensor, reduce, out: torch.Tensor) -> torch.Tensor:
        """`reduce(block, out=...)` ([count, numel] -> [count]) applied block by block, each
        writing its parameters' values into `out` [parameters] (flat order); returns `out`."""
        first = 0
        for offset, count, numel in self.blocks:
            reduce(
                flat[offset : offset + count * numel].view(count, numel), out[first : first + count]
            )
            first += count
        return out

    def per_layer_sum(self, per_param: torch.Tensor) -> torch.Tensor:
        """Sum a per-parameter vector into layers [L] (float64); 0 where a layer has none."""
        out = torch.zeros(self.n_layers, dtype=torch.float64, device=self.src.device)
        return out.index_add_(0, self.dst, per_param.double()[self.src])

    def per_layer_max(self, per_param: torch.Tensor) -> torch.Tensor:
        """Max of a per-parameter vector per layer [L] (float64); NaN for a layer with none."""
        values = per_param.double()[self.src]
        out = torch.full((self.n_layers,), float("nan"), dtype=torch.float64, device=values.device)
        return out.scatter_reduce_(0, self.dst, values, "amax", include_self=False)


class ParamGroups:
    """Which parameters belong to which layer, with reusable flat buffers for batched reductions.

    A parameter owned directly by several watched modules (tied weights) counts in each of them.
    """

    def __init__(self, layer_params: list[list[torch.nn.Parameter]], kernels: KernelChoice):
        self.kernels = kernels
        self.n_layers = len(layer_params)
        self.params: list[torch.nn.Parameter] = []
        position: dict[int, int] = {}
        pairs = []  # (parameter position, layer position)
        for layer, params in enumerate(layer_params):
            for p in params:
                if id(p) not in position:
                    position[id(p)] = len(self.params)
                    self.params.append(p)
                pairs.append((position[id(p)], layer))
        self._pairs = pairs
        self.nonempty = tuple(i for i, p in enumerate(self.params) if local_part(p).numel() > 0)
        self.sharded = any(local_part(p) is not p for p in self.params)  # FSDP2 DTensors
        self._owners = sorted({layer for _, layer in pairs})
        self._owner_masks: dict[str, torch.Tensor] = {}
        self._counts: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._layouts: dict[tuple, FlatLayout] = {}
        # Reused buffers: a fresh allocation of a model-sized tensor costs page faults on every
        # record (large blocks go back to the OS when freed).
        self._buffers: dict[str, torch.Tensor] = {}

    def layout(self, present: tuple[int, ...], device) -> FlatLayout:
        """The flat layout of the parameters at `present` positions, cached per set."""
        key = (present, str(device))
        if key not in self._layouts:
            if len(self._layouts) > 16:
                self._layouts.clear()
            chosen = [(i, self.params[i]) for i in present]
            self._layouts[key] = FlatLayout(chosen, self._pairs, self.n_layers, device)
        return self._layouts[key]

    def owner_mask(self, device) -> torch.Tensor:
        """[L] bool: the layers that own any parameter (cached per device)."""
        key = str(device)
        if key not in self._owner_masks:
            mask = np.zeros(self.n_layers, dtype=bool)
            mask[self._owners] = True
            self._owner_masks[key] = host_to_device(mask, torch.bool, device)
        return self._owner_masks[key]

    def element_counts(self, layout: FlatLayout, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layer [L] float64: its parameter elements in `layout`, and those of them with
        requires_grad=False now (cached while the flags stay the same: no op per record)."""
        frozen = tuple(not p.requires_grad for p in layout.params)
        key = (id(layout), frozen)
        cached = self._counts.get(key)
        if cached is None:
            if len(self._counts) > 16:
                self._counts.clear()
            flags = host_to_device(frozen, torch.float64, device)
            count = layout.per_layer_sum(layout.numel)
            cached = self._counts[key] = (count, layout.per_layer_sum(layout.numel * flags))
        return cached

    def scratch(self, purpose: str, shape: tuple[int, ...], device) -> torch.Tensor:
        """A reused float32 buffer of `shape` on `device` for `purpose` (reallocated only when
        the shape or device changes)."""
        buffer = self._buffers.get(purpose)
        if buffer is None or tuple(buffer.shape) != shape or buffer.device != torch.device(device):
            buffer = self._buffers[purpose] = torch.empty(shape, dtype=torch.float32, device=device)
        return buffer

    def gather(self, purpose: str, layout: FlatLayout, tensors: list[torch.Tensor], device):
        """Copy `tensors` (in `layout.positions` order) into the reused `purpose` float32 buffer.

        Returns the flat buffer, valid until the next gather for the same purpose. Sharded
        tensors (DTensors) contribute this rank's shard.
        """
        if self.sharded:
            tensors = [local_part(t) for t in tensors]
        buffer = self._buffers.get(purpose)
        if buffer is None or buffer.numel() < layout.size or buffer.device != torch.device(device):
            buffer = self._buffers[purpose] = torch.empty(
                layout.size, dtype=torch.float32, device=device
            )
        flat = buffer[: layout.size]
        with torch.no_grad():
            torch._foreach_copy_(layout.views(flat), tensors)
        return flat


def _layer_nan(groups: ParamGroups, device) -> torch.Tensor:
    return torch.full((groups.n_layers,), float("nan"), dtype=torch.float64, device=device)


def per_param_sums(
    layout: FlatLayout, flat: torch.Tensor, numba: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """[parameters, 4] in flat order: sum, sum of squares, max |x|, inf/NaN count.

    `numba` (CPU): one pass over `flat`, which it leaves as it was; float64 totals. Otherwise
    (the device path), into `out` (a reused float32 [4, parameters] buffer), overwriting `flat`
    in place: multi-tensor norms and maxima over the parameters' views, and one sum per
    distinct size for the signed sums and the inf/NaN counts, so the number of ops does not
    grow with the number of layers.
    """
    if numba:
        from gradscope.recorder._cpu_kernels import param_sums_into

        table = np.empty((len(layout.shapes), 4))
        param_sums_into(flat.numpy(), layout.bounds, table)
        return torch.from_numpy(table)
    sums, sumsq, absmax, nonfinite = out.unbind(0)
    views = layout.views(flat)
    layout.per_param(flat, lambda block, o: torch.sum(block, 1, out=o), sums)
    torch.stack(torch._foreach_norm(views, 2), out=sumsq).square_()
    flat.abs_()
    torch.stack(torch._foreach_max(views), out=absmax)  # NaN propagates
    # |x| - |x| is NaN exactly where x is inf or NaN, else 0; "!= 0" turns those into 1.0
    flat.sub_(flat)
    torch.ne(flat, 0, out=flat)
    layout.per_param(flat, lambda block, o: torch.sum(block, 1, out=o), nonfinite)  # exact < 2**24
    return out.t()


def per_param_sumsq(
    layout: FlatLayout, flat: torch.Tensor, out: torch.Tensor, numba: bool
) -> torch.Tensor:
    """[parameters] in flat order: each parameter's sum of squares, into `out`; `flat` kept.

    On CPU (`numba` mode) one torch norm per distinct size, which runs on every thread and
    beats the single-threaded kernel when only this one sum is wanted; on the device path one
    multi-tensor norm over the parameters' views.
    """
    if numba:
        return layout.per_param(flat, _block_norms, out).square_()
    return torch.stack(torch._foreach_norm(layout.views(flat), 2), out=out).square_()


def _block_norms(block: torch.Tensor, out: torch.Tensor) -> None:
    torch.linalg.vector_norm(block, 2, dim=1, out=out)


def gradient_sums(groups: ParamGroups, device) -> dict[str, torch.Tensor]:
    """Per-layer raw gradient sums [L] (float64): grad_count, grad_total, grad_sumsq,
    grad_nonfinite (to add across ranks) and grad_absmax (NaN for a layer with no gradient).

    A sharded parameter contributes the gradient shard this rank holds.
    """
    if groups.sharded:
        grads = [local_part(p.grad) if p.grad is not None else None for p in groups.params]
    else:
        grads = [p.grad for p in groups.params]
    present = tuple(i for i, g in enumerate(grads) if g is not None and g.numel() > 0)
    if not present:
        zero = torch.zeros(groups.n_layers, dtype=torch.float64, device=device)
        sums = dict.fromkeys(("grad_count", "grad_total", "grad_sumsq", "grad_nonfinite"), zero)
        return {**sums, "grad_absmax": _layer_nan(groups, device)}
    layout = groups.layout(present, device)
    grads = [p.grad for p in layout.params]
    flat = groups.gather("grad", layout, grads, device)
    numba = groups.kernels.numba_for(flat.device)
    out = None if numba else groups.scratch("grad sums", (4, len(layout.params)), device)
    sums, sumsq, absmax, nonfinite = per_param_sums(layout, flat, numba, out).to(device).unbind(1)
    return {
        "grad_count": layout.per_layer_sum(layout.numel),
        "grad_total": layout.per_layer_sum(sums),
        "grad_sumsq": layout.per_layer_sum(sumsq),
        "grad_nonfinite": layout.per_layer_sum(nonfinite),
        "grad_absmax": layout.per_layer_max(absmax),
    }


def gradient_stats_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """grad_* per layer [L] from `gradient_sums` (of one rank, or added across ranks)."""
    count = sums["grad_count"]
    nan = torch.full_like(count, float("nan"))
    has_grad = count > 0
    mean = sums["grad_total"] / count
    variance = (sums["grad_sumsq"] / count - mean**2).clamp_min(0)
    return {
        "grad_norm": torch.where(has_grad, sums["grad_sumsq"].sqrt(), nan),
        "grad_mean": torch.where(has_grad, mean, nan),
        "grad_std": torch.where(has_grad, variance.sqrt(), nan),
        "grad_absmax": torch.where(has_grad, sums["grad_absmax"], nan),
        "grad_nonfinite": torch.where(has_grad, sums["grad_nonfinite"], nan),
    }


class WeightSnapshot:
    """A float32 copy of the parameters taken before an update, in a reused flat buffer."""

    def __init__(self, groups: ParamGroups, device):
        present = groups.nonempty
        self.layout = groups.layout(present, device) if present else None
        self.flat = None
        if self.layout is not None:
            self.flat = groups.gather("weight", self.layout, self.layout.params, device)


def weight_snapshot(groups: ParamGroups, device) -> WeightSnapshot:
    """Copy every parameter now (valid until the next snapshot of the same groups)."""
    return WeightSnapshot(groups, device)


def weight_sums(groups: ParamGroups, before: WeightSnapshot, device) -> dict[str, torch.Tensor]:
    """Per-layer raw sums [L] (float64) to add across ranks: weight_sumsq (of `before`),
    update_sumsq (of the change since), weight_count and weight_frozen (the parameter elements,
    and those with requires_grad=False). Overwrites the snapshot with the difference."""
    layout, flat = before.layout, before.flat
    if layout is None:
        zero = torch.zeros(groups.n_layers, dtype=torch.float64, device=device)
        return dict.fromkeys(
            ("weight_sumsq", "update_sumsq", "weight_count", "weight_frozen"), zero
        )

    sumsq = groups.scratch("weight sums", (2, len(layout.params)), flat.device)
    numba = groups.kernels.numba_for(flat.device)
    before_sq = per_param_sumsq(layout, flat, sumsq[0], numba).to(device)
    params = [local_part(p) for p in layout.params] if groups.sharded else layout.params
    with torch.no_grad():
        torch._foreach_sub_(layout.views(flat), params)
    delta_sq = per_param_sumsq(layout, flat, sumsq[1], numba).to(device)
    count, frozen = groups.element_counts(layout, device)
    return {
        "weight_sumsq": layout.per_layer_sum(before_sq),
        "update_sumsq": layout.per_layer_sum(delta_sq),
        "weight_count": count,
        "weight_frozen": frozen,
    }


def weight_stats_from_sums(sums: dict[str, torch.Tensor], owns: torch.Tensor):
    """weight_norm, update_ratio and weight_frozen_frac [L] from `weight_sums`; `owns`: the
    layers that own any parameter (the others get NaN)."""
    nan = torch.full_like(sums["weight_sumsq"], float("nan"))
    norm = sums["weight_sumsq"].sqrt()
    change = sums["update_sumsq"].sqrt()
    return {
        "weight_norm": torch.where(owns, norm, nan),
        "update_ratio": torch.where(owns, change / norm, nan),
        "weight_frozen_frac": torch.where(owns, sums["weight_frozen"] / sums["weight_count"], nan),
    }
