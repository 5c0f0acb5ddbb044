"""The activation statistics as batched tensor functions, and the statistics' groups."""

from __future__ import annotations

import numpy as np
import torch

from gradscope.recorder._kernels import CompiledOrEager
from gradscope.statistics import names_in

GRAD_STATS = names_in("grad")
WEIGHT_STATS = names_in("weight")
ACT_STATS = names_in("act")
ACT_GRAD_STATS = names_in("act_grad")
GNS_STATS = names_in("gns")  # the gradient noise scale's (recorder/_noise_scale.py)
PARAM_STATS = GRAD_STATS + WEIGHT_STATS

# Raw sums of one module call's outputs: [total, sum of squares, max |x|, nonzeros, shift c,
# then the sums of y, y^2, y^3, y^4 for y = x - c], with the element count kept aside. Combining
# into moments happens once per record, batched over calls.
ACT_SUMS_SIZE = 9
EXACT_FLOAT32_COUNT = 2**24  # float32 holds every integer count up to here exactly


def floating_tensors(output) -> list[torch.Tensor]:
    """The floating-point tensors in a module's output: walks tuples, lists, dicts, namedtuples."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = output.values()
    elif not isinstance(output, (tuple, list)):
        return []
    found = []
    for item in output:
        found.extend(floating_tensors(item))
    return found


def map_floating(output, fn):
    """`output` with each floating-point tensor `t` in it replaced by `fn(t)`, walked as
    `floating_tensors` walks it: tuples and namedtuples are rebuilt, lists and dicts (and dict
    subclasses, such as a Hugging Face ModelOutput) are updated in place."""
    if isinstance(output, torch.Tensor):
        return fn(output) if output.is_floating_point() else output
    if isinstance(output, dict):
        for key in list(output):
            output[key] = map_floating(output[key], fn)
        return output
    if isinstance(output, list):
        output[:] = [map_floating(item, fn) for item in output]
        return output
    if isinstance(output, tuple):
        items = [map_floating(item, fn) for item in output]
        return type(output)(*items) if hasattr(output, "_fields") else tuple(items)
    return output


def flat_sample(tensors: list[torch.Tensor], batch_sample: int | None) -> torch.Tensor:
    """One call's outputs as one detached 1-D float32 tensor: the first `batch_sample` rows of
    each (all rows if None), low-precision outputs (AMP) converted so sums run in float32."""
    parts = []
    for t in tensors:
        t = t.detach()
        if batch_sample is not None and t.dim() > 0 and t.shape[0] > batch_sample:
            t = t[:batch_sample]
        parts.append(t.reshape(-1))
    x = parts[0] if len(parts) == 1 else torch.cat(parts)
    return x if x.dtype == torch.float32 else x.float()


def host_sample(tensors: list[torch.Tensor], batch_sample: int | None) -> np.ndarray:
    """`flat_sample` of CPU tensors as a 1-D float32 numpy array. One dense float32 output
    (contiguous, or channels-last as inside inductor's graphs: the statistics do not depend on
    the order of the elements) is read in place, and so are its first rows when they come
    first in memory: the sample is a view, made without the torch ops (and their overhead)
    of a slice."""
    t = tensors[0]
    if len(tensors) == 1 and t.dtype is torch.float32:
        rows = t.shape[0] if t.dim() else 1
        sampled = batch_sample is not None and rows > batch_sample
        x = _in_memory_order((t.detach() if t.requires_grad else t).numpy(), sampled)
        if x is not None:
            return x[: x.shape[0] // rows * batch_sample] if sampled else x
    return flat_sample(tensors, batch_sample).numpy()


class DeviceLists:
    """Small host arrays (call layers, unit positions) as device tensors, cached by content:
    the same ones recur record after record, so each is copied to the device once. A cached
    tensor is a copy (arrays may be views of reused tables)."""

    def __init__(self, device, size: int = 64):
        self.device = device
        self._cache: dict[tuple, torch.Tensor] = {}
        self._size = size

    def __call__(self, values, dtype: torch.dtype) -> torch.Tensor:
        values = np.ascontiguousarray(values)
        key = (values.tobytes(), values.dtype.str, dtype)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) > self._size:
                self._cache.clear()
            cached = self._cache[key] = host_to_device(values, dtype, self.device)
        return cached


def _in_memory_order(a: np.ndarray, rows_first: bool) -> np.ndarray | None:
    """A 1-D view of the elements of `a` in memory order, when `a` is dense (no gaps, no
    overlaps) and, if `rows_first`, its first dimension is outermost in memory; else None."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    order = sorted(range(a.ndim), key=lambda d: -a.strides[d])  # stable: ties keep dim 0 first
    if rows_first and order[0] != 0:
        return None
    in_memory_order = a.transpose(order)
    return in_memory_order.reshape(-1) if in_memory_order.flags.c_contiguous else None


def flat_in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """All elements of `t` as a 1-D tensor: a view in memory order when `t` is dense
    (contiguous, channels-last or otherwise permuted), a copy otherwise. For reductions that
    do not depend on the order of the elements."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    permuted = t.permute(order)
    return permuted.view(-1) if permuted.is_contiguous() else t.reshape(-1)


def host_to_device(values, dtype: torch.dtype, device) -> torch.Tensor:
    """A copy of small host values (a list or array) as a tensor on `device`, without a host
    sync: on CUDA through pinned memory and a non-blocking copy (the caching host allocator
    keeps the pinned block until the copy is done)."""
    host = torch.tensor(np.asarray(values), dtype=dtype)
    device = torch.device(device)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def activation_layer_sums(
    sums: torch.Tensor, counts: torch.Tensor, layer_of: torch.Tensor, n_layers: int
) -> dict[str, torch.Tensor]:
    """Per-layer raw sums [L] (float64) of per-call sums [C, ACT_SUMS_SIZE]: act_count,
    act_total, act_nonzeros (to add across ranks) and act_absmax (NaN for a layer never
    called)."""
    s, n = sums.double(), counts.double()
    total, _, call_absmax, nonzeros = s[:, :4].unbind(1)
    absmax = n.new_full((n_layers,), float("nan")).scatter_reduce_(
        0, layer_of, call_absmax, "amax", include_self=False
    )
    return {
        "act_count": n.new_zeros(n_layers).index_add_(0, layer_of, n),
        "act_total": n.new_zeros(n_layers).index_add_(0, layer_of, total),
        "act_nonzeros": n.new_zeros(n_layers).index_add_(0, layer_of, nonzeros),
        "act_absmax": absmax,
    }


def activation_moments(
    sums: torch.Tensor, counts: torch.Tensor, layer_of: torch.Tensor, mean: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per layer [L], the second and fourth powers of its calls' outputs' deviations from
    `mean` summed: act_spread and act_moment4. Each call's central moments come from its
    shifted power sums, then move to `mean` exactly (Chan et al.; Pebay 2008):
    M2 + n d^2 and M4 + 4 d M3 + 6 d^2 M2 + n d^4, d the call's mean minus `mean`."""
    s, n = sums.double(), counts.double()
    shift, y1, y2, y3, y4 = s[:, 4:9].unbind(1)
    mu = torch.where(n > 0, y1 / n, 0.0)  # the call's mean of y = x - shift
    m2 = (y2 - n * mu**2).clamp_min(0)
    m3 = y3 - 3 * mu * y2 + 2 * n * mu**3
    m4 = (y4 - 4 * mu * y3 + 6 * mu**2 * y2 - 3 * n * mu**4).clamp_min(0)
    d = torch.where(n > 0, shift + mu - mean[layer_of], 0.0)
    spread = m2 + n * d**2
    moment4 = m4 + 4 * d * m3 + 6 * d**2 * m2 + n * d**4
    return {
        "act_spread": mean.new_zeros(mean.shape).index_add_(0, layer_of, spread),
        "act_moment4": mean.new_zeros(mean.shape).index_add_(0, layer_of, moment4),
    }


# the device path's: some twenty element-wise ops and two scatters in one compiled kernel
activation_moments_fused = CompiledOrEager(
    activation_moments, activation_moments, "the activation moments"
)


def activation_stats(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """act_mean/std/absmax/zero_frac/kurtosis/max_rms [L] from per-layer raw sums
    (`activation_layer_sums` and `activation_moments` about their mean); NaN for a layer
    never called (and kurtosis and max/RMS for one whose outputs are all equal, or zero)."""
    count = layer["act_count"]
    mean = layer["act_total"] / count
    var = layer["act_spread"] / count
    return {
        "act_mean": mean,
        "act_std": var.sqrt(),
        "act_absmax": layer["act_absmax"],
        "act_zero_frac": (count - layer["act_nonzeros"]) / count,
        "act_kurtosis": layer["act_moment4"] / count / var**2,
        "act_max_rms": layer["act_absmax"] / (var + mean**2).sqrt(),
    }


def output_grad_layer_sums(
    sumsq: torch.Tensor, layer_of: torch.Tensor, calls: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-layer raw sums [L] (float64) of output-gradient sums of squares (`sumsq` [n], of
    gradients or of their units, each of layer `layer_of`): act_grad_sumsq, and act_grad_calls,
    `calls` [L], the number of gradients seen (to add across ranks)."""
    total = torch.zeros_like(calls).index_add_(0, layer_of, sumsq.double())
    return {"act_grad_sumsq": total, "act_grad_calls": calls}


def output_grad_norm(layer: dict[str, torch.Tensor]) -> torch.Tensor:
    """act_grad_norm [L] from `output_grad_layer_sums`: NaN for a layer no gradient reached."""
    return torch.where(layer["act_grad_calls"] > 0, layer["act_grad_sumsq"].sqrt(), torch.nan)


def _flagged_per_layer(values, at, unit_layer, units) -> torch.Tensor:
    """Per layer [L] float64 (`units` [L]: each layer's unit count): how many of its units have
    a nonzero value, merging first the values [n] of the same unit (canonical position `at`
    [n] among the record's units, each of layer `unit_layer`)."""
    merged = torch.zeros_like(unit_layer, dtype=torch.float32)
    merged.index_add_(0, at, (values != 0).float())
    return torch.zeros_like(units).index_add_(0, unit_layer, (merged > 0).double())


# the device path's: merge and count in one compiled kernel per record
flagged_per_layer = CompiledOrEager(_flagged_per_layer, _flagged_per_layer, "the unit counts")


def unit_layer_sums(layout, values, at, n_layers: int, on_device, fused: bool):
    """Per layer [L] float64: its units in the record (`layout`) and how many of them are
    flagged (some value != 0 among `values` [n] at canonical positions `at` [n]).
    `on_device(array, dtype)`: host arrays as cached device tensors."""
    units = on_device(layout.units_per_layer(n_layers), torch.float64)
    if not layout.size:
        return units, torch.zeros_like(units)
    count = flagged_per_layer if fused else _flagged_per_layer
    return units, count(values, at, on_device(layout.layer_of, torch.long), units)


def unit_stats(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """act_pos_frac, act_grad_zero_frac and act_outlier_channel [L] from per-layer unit
    counts and indices (those present); NaN for a layer with no units in the record."""
    out = {}
    if "act_unit_sumsq" in layer:
        out["act_outlier_channel"] = layer["act_unit_sumsq"]
    if "act_units" in layer:
        out["act_pos_frac"] = layer["act_pos_units"] / layer["act_units"]
    if "act_grad_units" in layer:
        units = layer["act_grad_units"]
        out["act_grad_zero_frac"] = (units - layer["act_grad_nonzero_units"]) / units
    return out


def pick_largest_units(sums, at, elements, unit_layer, unit_index, template) -> torch.Tensor:
    """Per layer [L] float64 (`template` [L]): the index among its output's units of the unit
    of largest mean square, merging first the sums of squares [n] of the same unit (canonical
    position `at` [n]; `elements` [U] each unit's element count, `unit_layer` [U] its layer,
    `unit_index` [U] its index); NaN for a layer with no units, or a NaN among them."""
    merged = torch.zeros_like(elements).index_add_(0, at, sums.double())
    mean_square = torch.where(elements > 0, merged / elements, -torch.inf)
    top = torch.full_like(template, -torch.inf).scatter_reduce(
        0, unit_layer, mean_square, "amax", include_self=True
    )
    best = torch.where(mean_square == top[unit_layer], unit_index.double(), torch.inf)
    index = torch.full_like(template, torch.inf).scatter_reduce(
        0, unit_layer, best, "amin", include_self=True
    )
    return torch.where(torch.isfinite(index) & (top > -torch.inf), index, torch.nan)


# the device path's: merge, compare and pick in one compiled kernel per record
pick_largest_units_fused = CompiledOrEager(
    pick_largest_units, pick_largest_units, "the outlier units"
)


def largest_units(layout, sums, at, elements, n_layers: int, on_device, fused: bool):
    """act_unit_sumsq [L] float64: per layer the index of its unit of largest RMS (see
    `pick_largest_units`), from the record's per-unit sums of squares [n] at canonical
    positions `at` of `layout`, and each canonical unit's element count `elements` (host)."""
    template = on_device(np.zeros(n_layers), torch.float64)
    if not layout.size:
        return torch.full_like(template, torch.nan)
    pick = pick_largest_units_fused if fused else pick_largest_units
    return pick(
        sums,
        at,
        on_device(elements, torch.float64),
        on_device(layout.layer_of, torch.long),
        on_device(layout.unit_index, torch.long),
        template,
    )
