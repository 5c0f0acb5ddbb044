"""Brute-force reference statistics for the recorder tests: plain autograd, per-parameter loops."""

import math

import torch
from torch import nn

from gradscope.recorder._stats import floating_tensors


class ReferenceProbe:
    """Keeps every grad-enabled output of the given modules (and retains its gradient)."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.outputs = {name: [] for name in modules}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            if not torch.is_grad_enabled():
                return
            kept = []
            for t in floating_tensors(output):
                if t.requires_grad:
                    t.retain_grad()
                # keep the tensor (for .grad) and a copy of its value now (in-place ops follow)
                kept.append((t, t.detach().clone()))
            self.outputs[name].append(kept)

        return hook

    def clear(self):
        for name in self.outputs:
            self.outputs[name] = []

    def remove(self):
        for h in self.handles:
            h.remove()


def act_reference(outputs, batch_sample):
    """act_mean/std/absmax/zero_frac/kurtosis/max_rms over the kept output copies, first
    `batch_sample` rows; Pearson's kurtosis written out, E[(x - mean)^4] / E[(x - mean)^2]^2."""
    values = []
    for call in outputs:
        for _, copy in call:
            x = copy if batch_sample is None or copy.dim() == 0 else copy[:batch_sample]
            values.extend(x.double().reshape(-1).tolist())
    if not values:
        names = ("mean", "std", "absmax", "zero_frac", "kurtosis", "max_rms")
        return {f"act_{name}": math.nan for name in names}
    v = torch.tensor(values, dtype=torch.float64)
    deviation = v - v.mean()
    variance = deviation.pow(2).mean()
    return dict(
        act_mean=v.mean().item(),
        act_std=v.std(correction=0).item(),
        act_absmax=v.abs().max().item(),
        act_zero_frac=(v == 0).double().mean().item(),
        act_kurtosis=(deviation.pow(4).mean() / variance**2).item(),
        act_max_rms=(v.abs().max() / v.pow(2).mean().sqrt()).item(),
    )


def act_grad_reference(outputs):
    """sqrt of the sum over calls of ||dL/dO||^2, from retained gradients; NaN if none."""
    total, seen = 0.0, False
    for call in outputs:
        for tensor, _ in call:
            if tensor.grad is not None:
                total += tensor.grad.double().pow(2).sum().item()
                seen = True
    return math.sqrt(total) if seen else math.nan


def _units(x: torch.Tensor, module: nn.Module) -> list[torch.Tensor]:
    """The units of one output, each as a tensor of its elements: channels (dim 1) of conv and
    norm outputs, features (last dim) of linear ones, for other modules dim 1 of outputs with
    4 or more dims, else the last; a 0-d or 1-d output is one unit."""
    if x.dim() < 2:
        return [x.reshape(-1)]
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d)):
        dim = 1
    elif isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding)):
        dim = x.dim() - 1
    else:
        dim = 1 if x.dim() >= 4 else x.dim() - 1
    return [x.select(dim, u).reshape(-1) for u in range(x.shape[dim])]


def _sampled_units(outputs, batch_sample, module: nn.Module):
    """Each output unit's sampled elements, concatenated over calls: key (output slot, unit
    count, index) -> [tensors]."""
    units = {}
    for call in outputs:
        for slot, (_, copy) in enumerate(call):
            x = copy if batch_sample is None or copy.dim() == 0 else copy[:batch_sample]
            found = _units(x, module)
            for u, values in enumerate(found):
                units.setdefault((slot, len(found), u), []).append(values)
    return units


def _unit_rms(outputs, batch_sample, module: nn.Module) -> dict:
    """Each unit's RMS over its sampled elements of every call (units with elements)."""
    rms = {}
    for key, parts in _sampled_units(outputs, batch_sample, module).items():
        values = torch.cat(parts).double()
        if values.numel():
            rms[key] = math.sqrt(values.pow(2).mean().item())
    return rms


def outlier_ties(outputs, batch_sample, module: nn.Module) -> set:
    """The unit indices whose RMS ties with the largest to float32 accuracy (BatchNorm
    outputs: all of them near 1), any of which the recorder may name act_outlier_channel."""
    rms = _unit_rms(outputs, batch_sample, module)
    top = max(rms.values(), default=math.nan)
    return {key[2] for key, value in rms.items() if value >= (1 - 1e-5) * top}


def unit_reference(outputs, batch_sample, module: nn.Module):
    """act_pos_frac (units > 0 in some sampled row of some call), act_outlier_channel (the index
    of the unit of largest RMS over its sampled rows of every call) and act_grad_zero_frac
    (units whose gradient is exactly 0 in every row of every call that got one), by plain loops
    over units; a unit is (output slot, unit count, index), the same across calls."""
    sampled = _sampled_units(outputs, batch_sample, module)
    positive = {key: any(bool((v > 0).any()) for v in parts) for key, parts in sampled.items()}
    nonzero = {}
    for call in outputs:
        for slot, (tensor, _) in enumerate(call):
            if tensor is not None and tensor.grad is not None:
                grads = _units(tensor.grad, module)
                for u, values in enumerate(grads):
                    key = (slot, len(grads), u)
                    nonzero[key] = nonzero.get(key, False) or bool((values != 0).any())
    pos = sum(positive.values()) / len(positive) if positive else math.nan
    zero = (len(nonzero) - sum(nonzero.values())) / len(nonzero) if nonzero else math.nan
    rms = _unit_rms(outputs, batch_sample, module)
    outlier = max(sorted(rms), key=rms.get)[2] if rms else math.nan
    return dict(act_pos_frac=pos, act_outlier_channel=outlier, act_grad_zero_frac=zero)


def grad_reference(module: nn.Module):
    """grad_* statistics over the module's own parameters' gradients, by plain loops."""
    grads = [
        p.grad.double().reshape(-1) for p in module.parameters(recurse=False) if p.grad is not None
    ]
    if not grads:
        return {
            k: math.nan
            for k in ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_nonfinite")
        }
    g = torch.cat(grads)
    return dict(
        grad_norm=g.norm().item(),
        grad_mean=g.mean().item(),
        grad_std=g.std(correction=0).item(),
        grad_absmax=g.abs().max().item(),
        grad_nonfinite=float((~torch.isfinite(g)).sum().item()),
    )


def weight_copy(module: nn.Module):
    return [p.detach().double().clone() for p in module.parameters(recurse=False)]


def weight_reference(before, module: nn.Module):
    """weight_norm of `before`, ||after - before|| / ||before||, and the share of parameter
    elements with requires_grad=False."""
    if not before:
        return dict(weight_norm=math.nan, update_ratio=math.nan, weight_frozen_frac=math.nan)
    b = torch.cat([w.reshape(-1) for w in before])
    params = list(module.parameters(recurse=False))
    a = torch.cat([p.detach().double().reshape(-1) for p in params])
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    total = sum(p.numel() for p in params)
    return dict(
        weight_norm=b.norm().item(),
        update_ratio=((a - b).norm() / b.norm()).item(),
        weight_frozen_frac=frozen / total if total else math.nan,
    )


def channel_reference(outputs, channel_dim):
    """The probe's chan_sq_mean, chan_var, act_abs_mean and dead_frac of a module, by loops:
    for each call, over the first kept output, each channel's mean and population variance
    over every other dimension (float64); then the calls averaged, weighted by elements."""
    totals = {"chan_sq_mean": 0.0, "chan_var": 0.0, "act_abs_mean": 0.0, "dead_frac": 0.0}
    count = 0
    for call in outputs:
        x = call[0][1].double()
        dim = channel_dim if channel_dim is not None else None
        channels = [x] if dim is None else [x.select(dim, c) for c in range(x.shape[dim])]
        means = [c.mean().item() for c in channels]
        variances = [c.var(correction=0).item() for c in channels]
        values = {
            "chan_sq_mean": sum(m * m for m in means) / len(means),
            "chan_var": sum(variances) / len(variances),
            "act_abs_mean": x.abs().mean().item(),
            "dead_frac": sum(bool((c == 0).all()) for c in channels) / len(channels),
        }
        for key, value in values.items():
            totals[key] += value * x.numel()
        count += x.numel()
    return {key: total / count for key, total in totals.items()}


def average_channel_variance_reference(x: torch.Tensor, channel_dim: int = 1) -> float:
    """Mean over channels of each channel's population variance (float64, by a loop)."""
    x = x.double()
    variances = [x.select(channel_dim, c).var(correction=0).item() for c in range(x.shape[1])]
    return sum(variances) / len(variances)


def parameter_grads(model: nn.Module) -> dict[int, torch.Tensor]:
    """A float64 copy of every parameter's gradient now (zeros where it has none), by id."""
    return {
        id(p): p.grad.double().clone()
        if p.grad is not None
        else torch.zeros_like(p, dtype=torch.float64)
        for p in model.parameters()
    }


def gradient_change(model: nn.Module, before: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """What the backward passes since `before` (parameter_grads) added to each gradient."""
    now = parameter_grads(model)
    return {key: now[key] - before[key] for key in now}


def gns_reference(modules: dict[str, nn.Module], changes, rows, weight=1.0):
    """gns_* per module by plain loops, from each small batch's gradient change (`changes`,
    gradient_change of each backward pass, which adds weight x change to the step's gradient)
    and its rows. A parameter counts in the first module (in `modules` order) owning it;
    small-batch values are NaN with fewer than two small batches, all four for a module
    whose parameters have no gradient."""
    big = sum(rows)
    owned: set[int] = set()
    out = {}
    for name, module in modules.items():
        params = [p for p in module.parameters(recurse=False) if id(p) not in owned]
        owned.update(id(p) for p in params)
        if not any(p.grad is not None and p.numel() for p in params):
            out[name] = dict.fromkeys(GNS_NAMES, math.nan)
            continue

        large = sum(sum(c[id(p)] for c in changes).pow(2).sum().item() for p in params)
        small = [
            (big / r) ** 2 * sum(c[id(p)].pow(2).sum().item() for p in params)
            for c, r in zip(changes, rows, strict=True)
        ]
        large, small = weight**2 * large, [weight**2 * value for value in small]
        several = len(changes) >= 2
        out[name] = {
            "gns_small_sq": sum(small) / len(small) if several else math.nan,
            "gns_large_sq": large,
            "gns_small_batch": len(rows) / sum(1 / r for r in rows) if several else math.nan,
            "gns_large_batch": float(big),
        }
    return out


GNS_NAMES = ("gns_small_sq", "gns_large_sq", "gns_small_batch", "gns_large_batch")
