"""The statistics gradscope records, as batched tensor functions, and their names."""

from __future__ import annotations

import numpy as np
import torch

from gradscope.errors import UsageError
from gradscope.store import GNS_STATS as _GNS_TITLES

GRAD_STATS = ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_nonfinite")
WEIGHT_STATS = ("weight_norm", "update_ratio")
ACT_STATS = ("act_mean", "act_std", "act_absmax", "act_zero_frac")
ACT_GRAD_STATS = ("act_grad_norm",)
# the gradient noise scale's raw sums (recorder/_noise_scale.py)
GNS_STATS = tuple(_GNS_TITLES)
PARAM_STATS = GRAD_STATS + WEIGHT_STATS
ALL_STATS = PARAM_STATS + ACT_STATS + ACT_GRAD_STATS + GNS_STATS

# Raw sums of one module call's outputs: [total, sum of squares, max |x|, nonzeros], with the
# element count kept aside. Combining into moments happens once per record, batched over calls.
ACT_SUMS_SIZE = 4
EXACT_FLOAT32_COUNT = 2**24  # float32 holds every integer count up to here exactly


def resolve_stats(stats) -> tuple[str, ...]:
    """Validate a user's selection of statistics; None means all. Keeps the canonical order."""
    if stats is None:
        return ALL_STATS
    if isinstance(stats, str):
        stats = [stats]
    unknown = [s for s in stats if s not in ALL_STATS]
    if unknown:
        raise UsageError(f"unknown statistic(s) {unknown}; available: {', '.join(ALL_STATS)}")
    chosen = set(stats)
    if not chosen:
        raise UsageError(f"no statistic selected; available: {', '.join(ALL_STATS)}")
    return tuple(s for s in ALL_STATS if s in chosen)


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


def combine_activation_sums(
    sums: torch.Tensor, counts: torch.Tensor, layer_of: torch.Tensor, n_layers: int
) -> dict[str, torch.Tensor]:
    """Merge per-call sums [C, 4] with counts [C] into per-layer act_* statistics, each [L].

    Each call's mean and squared deviations are formed first and merged exactly (Chan et al.),
    which keeps act_std accurate when calls differ in mean.
    """
    layer = activation_layer_sums(sums, counts, layer_of, n_layers)
    mean = layer["act_total"] / layer["act_count"]
    layer["act_spread"] = activation_spread(sums, counts, layer_of, mean)
    return activation_stats(layer)


def activation_layer_sums(
    sums: torch.Tensor, counts: torch.Tensor, layer_of: torch.Tensor, n_layers: int
) -> dict[str, torch.Tensor]:
    """Per-layer raw sums [L] (float64) of per-call sums [C, 4]: act_count, act_total,
    act_nonzeros (to add across ranks) and act_absmax (NaN for a layer never called)."""
    s, n = sums.double(), counts.double()
    total, _, call_absmax, nonzeros = s.unbind(1)
    absmax = n.new_full((n_layers,), float("nan")).scatter_reduce_(
        0, layer_of, call_absmax, "amax", include_self=False
    )
    return {
        "act_count": n.new_zeros(n_layers).index_add_(0, layer_of, n),
        "act_total": n.new_zeros(n_layers).index_add_(0, layer_of, total),
        "act_nonzeros": n.new_zeros(n_layers).index_add_(0, layer_of, nonzeros),
        "act_absmax": absmax,
    }


def activation_spread(
    sums: torch.Tensor, counts: torch.Tensor, layer_of: torch.Tensor, mean: torch.Tensor
) -> torch.Tensor:
    """Per layer, the sum of squared deviations of its calls' outputs from `mean` [L]: each
    call's own spread plus its count times its mean's squared distance (exact, Chan et al.)."""
    s, n = sums.double(), counts.double()
    total, sumsq, _, _ = s.unbind(1)
    call_mean = total / n
    call_m2 = (sumsq - total * call_mean).clamp_min(0)
    spread = call_m2 + n * (call_mean - mean[layer_of]) ** 2
    return mean.new_zeros(mean.shape).index_add_(0, layer_of, spread)


def activation_stats(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """act_mean/std/absmax/zero_frac [L] from per-layer raw sums (`activation_layer_sums` and
    the act_spread about their mean); NaN for a layer never called."""
    count = layer["act_count"]
    return {
        "act_mean": layer["act_total"] / count,
        "act_std": (layer["act_spread"] / count).sqrt(),
        "act_absmax": layer["act_absmax"],
        "act_zero_frac": (count - layer["act_nonzeros"]) / count,
    }


def combine_output_grad_sumsq(
    sumsq: torch.Tensor, layer_of: torch.Tensor, n_layers: int
) -> torch.Tensor:
    """Per-layer L2 norm of all output gradients of that layer's calls: [L], NaN if none."""
    return output_grad_norm(output_grad_layer_sums(sumsq, layer_of, n_layers))


def output_grad_layer_sums(
    sumsq: torch.Tensor, layer_of: torch.Tensor, n_layers: int
) -> dict[str, torch.Tensor]:
    """Per-layer raw sums [L] (float64) of output-gradient sums of squares: act_grad_sumsq and
    act_grad_calls, the number of gradients seen (to add across ranks)."""
    total = sumsq.new_zeros(n_layers, dtype=torch.float64)
    total.index_add_(0, layer_of, sumsq.double())
    calls = torch.zeros_like(total).index_add_(0, layer_of, torch.ones_like(total[layer_of]))
    return {"act_grad_sumsq": total, "act_grad_calls": calls}


def output_grad_norm(layer: dict[str, torch.Tensor]) -> torch.Tensor:
    """act_grad_norm [L] from `output_grad_layer_sums`: NaN for a layer no gradient reached."""
    return torch.where(layer["act_grad_calls"] > 0, layer["act_grad_sumsq"].sqrt(), torch.nan)
