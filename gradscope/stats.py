"""The statistics gradscope records, as batched tensor functions, and their names."""

from __future__ import annotations

import torch

from gradscope.errors import UsageError

GRAD_STATS = ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_nonfinite")
WEIGHT_STATS = ("weight_norm", "update_ratio")
ACT_STATS = ("act_mean", "act_std", "act_absmax", "act_zero_frac")
ACT_GRAD_STATS = ("act_grad_norm",)
PARAM_STATS = GRAD_STATS + WEIGHT_STATS
ALL_STATS = PARAM_STATS + ACT_STATS + ACT_GRAD_STATS

# Raw sums of one module call's outputs: [total, sum of squares, min, max, nonzeros], with the
# element count kept aside. Combining into moments happens once per record, batched over calls.
ACT_SUMS_SIZE = 5
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


def activation_sums(
    tensors: list[torch.Tensor], batch_sample: int | None, scratch: dict | None = None
) -> tuple[list[torch.Tensor], int]:
    """Raw sums of one call's outputs over the first `batch_sample` rows of each: (5 0-d, count).

    A sum, two dot products and one min/max pass: `var_mean` and `count_nonzero` are several
    times slower on CPU, and this runs once per watched module per recorded forward. `scratch`
    (a dict the caller keeps) holds a reusable buffer, sparing a large allocation per call.
    """
    parts = []
    for t in tensors:
        t = t.detach()
        if batch_sample is not None and t.dim() > 0:
            t = t[:batch_sample]
        parts.append(t.reshape(-1))
    x = parts[0] if len(parts) == 1 else torch.cat(parts)
    if x.dtype != torch.float32:
        x = x.float()  # low-precision outputs (AMP): sums in float32
    n = x.numel()
    if n == 0:
        zero = x.new_zeros(())
        return [zero] * ACT_SUMS_SIZE, 0
    lo, hi = torch.aminmax(x)
    if n < EXACT_FLOAT32_COUNT:
        signs = torch.sign(x, out=_scratch(scratch, x))
        nonzeros = torch.dot(signs, signs)  # sign(x)^2 is 1 exactly where x != 0
    else:
        nonzeros = torch.count_nonzero(x).float()
    return [x.sum(), torch.dot(x, x), lo, hi, nonzeros], n


def _scratch(scratch: dict | None, like: torch.Tensor) -> torch.Tensor | None:
    """A float32 buffer shaped like `like`, reused across calls (None: no reuse)."""
    if scratch is None:
        return None
    key = (like.device, like.numel())
    buffer = scratch.get(key)
    if buffer is None:
        buffer = scratch[key] = torch.empty_like(like)
    return buffer


def combine_activation_sums(
    sums: torch.Tensor, counts: torch.Tensor, layer_of: torch.Tensor, n_layers: int
) -> dict[str, torch.Tensor]:
    """Merge per-call sums [C, 5] with counts [C] into per-layer act_* statistics, each [L].

    Each call's mean and squared deviations are formed first and merged exactly (Chan et al.),
    which keeps act_std accurate when calls differ in mean.
    """
    s, n = sums.double(), counts.double()
    total, sumsq, lo, hi, nonzeros = s.unbind(1)
    call_mean = total / n
    call_m2 = (sumsq - total * call_mean).clamp_min(0)
    count = n.new_zeros(n_layers).index_add_(0, layer_of, n)
    mean = n.new_zeros(n_layers).index_add_(0, layer_of, total) / count  # NaN if never called
    spread = call_m2 + n * (call_mean - mean[layer_of]) ** 2
    m2 = n.new_zeros(n_layers).index_add_(0, layer_of, spread)
    absmax = n.new_full((n_layers,), float("nan")).scatter_reduce_(
        0, layer_of, torch.maximum(-lo, hi), "amax", include_self=False
    )
    zeros = count - n.new_zeros(n_layers).index_add_(0, layer_of, nonzeros)
    return {
        "act_mean": mean,
        "act_std": (m2 / count).sqrt(),
        "act_absmax": absmax,
        "act_zero_frac": zeros / count,
    }


def output_grad_sumsq(grad: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of one output gradient, in float32: a 0-d tensor (a dot product: fast)."""
    g = grad.detach().reshape(-1)
    if g.dtype != torch.float32:
        g = g.float()
    return torch.dot(g, g)


def combine_output_grad_sumsq(
    sumsq: torch.Tensor, layer_of: torch.Tensor, n_layers: int
) -> torch.Tensor:
    """Per-layer L2 norm of all output gradients of that layer's calls: [L], NaN if none."""
    total = sumsq.new_zeros(n_layers, dtype=torch.float64)
    total.index_add_(0, layer_of, sumsq.double())
    seen = torch.zeros(n_layers, dtype=torch.bool, device=sumsq.device)
    seen[layer_of] = True
    return torch.where(seen, total.sqrt(), torch.nan)


class ParamGroups:
    """Which parameters belong to which layer, as index tensors for batched per-layer reductions.

    A parameter owned directly by several watched modules (tied weights) counts in each of them.
    """

    def __init__(self, layer_params: list[list[torch.nn.Parameter]]):
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
        self._index_cache: dict[tuple, tuple] = {}
        # Reused work buffers: a fresh allocation of a model-sized tensor costs page faults on
        # every record (large blocks go back to the OS when freed).
        self._flat: torch.Tensor | None = None
        self._snapshot: list[torch.Tensor] | None = None

    def flat_buffer(self, numel: int, device) -> torch.Tensor:
        """A reused float32 vector of `numel` elements on `device`."""
        flat = self._flat
        if flat is None or flat.numel() < numel or flat.device != torch.device(device):
            flat = self._flat = torch.empty(numel, dtype=torch.float32, device=device)
        return flat[:numel]

    def snapshot(self) -> list[torch.Tensor]:
        """A float32 copy of every parameter now, in reused buffers (valid until the next call)."""
        params = [p.detach() for p in self.params]
        if self._snapshot is None:
            self._snapshot = [p.float().clone() for p in params]
        else:
            torch._foreach_copy_(self._snapshot, params)
        return self._snapshot

    def index(self, present: tuple[int, ...], device) -> tuple[torch.Tensor, ...]:
        """(positions into `present`, layer of each, numel of each present parameter, sizes).

        Cached per set of present parameters, so steady training makes no host-to-device copy.
        """
        key = (present, str(device))
        if key not in self._index_cache:
            slot = {p: i for i, p in enumerate(present)}
            rows = [(slot[p], layer) for p, layer in self._pairs if p in slot]
            src = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
            dst = torch.tensor([r[1] for r in rows], dtype=torch.long, device=device)
            sizes = [self.params[p].numel() for p in present]
            numel = torch.tensor(sizes, dtype=torch.float64, device=device)
            self._index_cache[key] = (src, dst, numel, sizes)
        return self._index_cache[key]

    def per_layer_sum(self, per_param: torch.Tensor, present, device) -> torch.Tensor:
        """Sum a per-parameter vector [P'] into layers [L] (float64); 0 where a layer has none."""
        src, dst = self.index(present, device)[:2]
        out = torch.zeros(self.n_layers, dtype=torch.float64, device=device)
        return out.index_add_(0, dst, per_param.double()[src])

    def per_layer_max(self, per_param: torch.Tensor, present, device) -> torch.Tensor:
        """Max of a per-parameter vector [P'] per layer [L] (float64); NaN for a layer with none."""
        src, dst = self.index(present, device)[:2]
        out = torch.full((self.n_layers,), float("nan"), dtype=torch.float64, device=device)
        return out.scatter_reduce_(0, dst, per_param.double()[src], "amax", include_self=False)


def _as_float(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


def gradient_stats(groups: ParamGroups, device) -> dict[str, torch.Tensor]:
    """grad_norm/mean/std/absmax/nonfinite per layer [L] from the parameters' current `.grad`.

    Computed with a handful of batched kernels whatever the number of layers; layers with no
    gradient get NaN.
    """
    present = tuple(i for i, p in enumerate(groups.params) if p.grad is not None)
    nan = torch.full((groups.n_layers,), float("nan"), dtype=torch.float64, device=device)
    if not present:
        return {name: nan for name in GRAD_STATS}
    grads = _as_float([groups.params[i].grad.detach() for i in present])
    numel, sizes = groups.index(present, device)[2:]
    flat = torch.cat([g.reshape(-1) for g in grads], out=groups.flat_buffer(sum(sizes), device))
    sums = torch.segment_reduce(flat, "sum", lengths=numel.long())  # signed sum per parameter
    sumsq = torch.stack(torch._foreach_norm(grads, 2)).double() ** 2
    absmax = torch.stack(torch._foreach_norm(grads, float("inf")))
    # x - x is NaN exactly where x is inf or NaN, else 0; the 0-"norm" counts the non-zeros.
    flat.sub_(flat)
    nonfinite = torch.stack(torch._foreach_norm(list(flat.split(sizes)), 0))

    count = groups.per_layer_sum(numel, present, device)
    has_grad = count > 0
    total = groups.per_layer_sum(sums, present, device)
    total_sq = groups.per_layer_sum(sumsq, present, device)
    mean = total / count
    variance = (total_sq / count - mean**2).clamp_min(0)
    return {
        "grad_norm": torch.where(has_grad, total_sq.sqrt(), nan),
        "grad_mean": torch.where(has_grad, mean, nan),
        "grad_std": torch.where(has_grad, variance.sqrt(), nan),
        "grad_absmax": groups.per_layer_max(absmax, present, device),
        "grad_nonfinite": torch.where(
            has_grad, groups.per_layer_sum(nonfinite, present, device), nan
        ),
    }


def weight_snapshot(groups: ParamGroups) -> list[torch.Tensor]:
    """A float32 copy of every parameter, taken before an update (reused by the next call)."""
    return groups.snapshot()


def weight_stats(
    groups: ParamGroups, before: list[torch.Tensor], device
) -> dict[str, torch.Tensor]:
    """weight_norm (of `before`) and update_ratio = ||after - before|| / ||before|| per layer.

    Overwrites `before` (a snapshot) with the difference, to spare an allocation.
    """
    present = tuple(range(len(groups.params)))
    nan = torch.full((groups.n_layers,), float("nan"), dtype=torch.float64, device=device)
    if not present:
        return {"weight_norm": nan, "update_ratio": nan}
    after = [p.detach() for p in groups.params]
    before_sq = torch.stack(torch._foreach_norm(before, 2)).double() ** 2
    torch._foreach_sub_(before, _as_float(after))
    delta_sq = torch.stack(torch._foreach_norm(before, 2)).double() ** 2
    owns = groups.per_layer_sum(torch.ones_like(before_sq), present, device) > 0
    norm = groups.per_layer_sum(before_sq, present, device).sqrt()
    change = groups.per_layer_sum(delta_sq, present, device).sqrt()
    return {
        "weight_norm": torch.where(owns, norm, nan),
        "update_ratio": torch.where(owns, change / norm, nan),
    }
