"""Every statistic gradscope records, in one place: name, title, group, reduction, rules."""

from __future__ import annotations

from dataclasses import dataclass

from gradscope.errors import UsageError

# What a statistic is computed from; the recorder reads each group at its own moment.
GROUPS = {
    "grad": "the layer's own parameters' gradients, read at the optimizer step before the update",
    "weight": "the layer's own parameters, before and after the update",
    "act": "the layer's floating-point outputs in the step's forward passes (first batch_sample "
    "rows of each call)",
    "act_grad": "the gradients of the layer's outputs, every row of the batch",
    "gns": "the layer's own parameters' gradients of each small batch (a backward pass on one "
    "rank, before accumulation and before the ranks' reduction) and of the step's large batch "
    "(the gradient the step applies)",
}


@dataclass(frozen=True)
class RawSum:
    """A per-layer sum that statistics are formed from, and how it combines.

    Within a record, sums of several calls of a module, of micro-batches and of parameters are
    added (`combine` "sum") or maxed ("max"); under data parallelism the same operation runs
    across ranks before the statistics are formed, so a record is the global batch's. Unit
    counts ("units": a layer's output units, channels or features, the same units on every
    call and rank) and counts of flagged units ("any": a flag per unit, OR-ed over calls,
    micro-batches and ranks, then counted) are formed from per-unit flags (`recorder._units`);
    a unit's index ("argmax": per unit a sum of squares and an element count, added over calls,
    micro-batches and ranks, then per layer the unit of the largest mean square) from per-unit
    sums.
    """

    name: str
    # "parameters", "small batches" (each backward pass's gradients on each rank), "outputs"
    # or "output gradients"
    source: str
    # "sum", "max", "units", "any" or "argmax" over calls, micro-batches, parameters, ranks
    combine: str
    # a maximum's count that says it has values (> 0); a flagged-unit count's unit count
    counted_by: str | None = None
    loss_scaled: bool = False  # a sum of squared dL/dO: counts 1/world^2 under DDP/FSDP


@dataclass(frozen=True)
class Statistic:
    """One recorded statistic: a float32 [records, layers] dataset of the run file."""

    name: str  # its dataset name in the run file, and in `attach(stats=...)`
    title: str  # in words, for figure titles: "Gradient norm"
    group: str  # a key of GROUPS: what it is computed from
    over: str  # the unit of reduction: what one value summarises
    sums: tuple[str, ...]  # the RawSums it is formed from (how it combines: theirs)
    rules: tuple[str, ...] = ()  # the diagnosis findings that read it
    no_rule: str = ""  # when `rules` is empty: why no diagnosis rule reads it

    @property
    def combines(self) -> str:
        """How its values combine over calls, micro-batches and ranks, in words."""
        return "; ".join(f"{s}: {RAW_SUMS[s].combine}" for s in self.sums)


_PARAM_SUMS = (
    RawSum("grad_count", "parameters", "sum"),
    RawSum("grad_total", "parameters", "sum"),
    RawSum("grad_sumsq", "parameters", "sum"),
    RawSum("grad_nonfinite", "parameters", "sum"),
    RawSum("grad_absmax", "parameters", "max", counted_by="grad_count"),
    RawSum("weight_sumsq", "parameters", "sum"),
    RawSum("update_sumsq", "parameters", "sum"),
    RawSum("weight_count", "parameters", "sum"),
    RawSum("weight_frozen", "parameters", "sum"),  # elements with requires_grad=False
)
_OUTPUT_SUMS = (
    RawSum("act_count", "outputs", "sum"),
    RawSum("act_total", "outputs", "sum"),
    # squared deviations from the layer's mean over every call and rank (Chan et al.): added
    # once the global mean is known
    RawSum("act_spread", "outputs", "sum"),
    # fourth powers of the deviations from that mean, added the same way (Pebay's update)
    RawSum("act_moment4", "outputs", "sum"),
    RawSum("act_nonzeros", "outputs", "sum"),
    RawSum("act_absmax", "outputs", "max", counted_by="act_count"),
    RawSum("act_units", "outputs", "units"),
    RawSum("act_pos_units", "outputs", "any", counted_by="act_units"),  # > 0 in some row
    # per unit, its squares summed (and its elements counted): the layer's unit of largest RMS
    RawSum("act_unit_sumsq", "outputs", "argmax"),
    RawSum("act_grad_sumsq", "output gradients", "sum", loss_scaled=True),
    RawSum("act_grad_calls", "output gradients", "sum"),
    RawSum("act_grad_units", "output gradients", "units"),
    # units with a dL/dO != 0 in some row
    RawSum("act_grad_nonzero_units", "output gradients", "any", counted_by="act_grad_units"),
)
# The gradient noise scale's (recorder/_noise_scale.py): the large batch's are of the reduced
# gradient, so they combine as the parameter sums do; the small batches' are added over ranks.
_NOISE_SUMS = (
    RawSum("gns_large_sumsq", "parameters", "sum"),
    RawSum("gns_large_count", "parameters", "sum"),
    RawSum("gns_small_sumsq", "small batches", "sum"),  # sum over small batches of |c_j|^2
    RawSum("gns_batches", "small batches", "sum"),  # how many small batches
    RawSum("gns_rows", "small batches", "sum"),  # their rows: the large batch B
    RawSum("gns_inv_rows", "small batches", "sum"),  # sum of 1 / b_j
)
RAW_SUMS = {s.name: s for s in _PARAM_SUMS + _OUTPUT_SUMS + _NOISE_SUMS}

_GRAD = "every element of the layer's own parameters' gradients, taken together"
_ACT = "every element of the layer's sampled outputs, over all its calls in the step"
_UNITS = (
    "the layer's output units (channels of conv-like outputs, features of linear-like ones; "
    "each output tensor's own)"
)
_NOT_A_RULE = "no rule: shown in the figures and the latest-record table"
_NOISE = "the layer's own parameters' gradients (a tied parameter in its first layer)"

STATISTICS = (
    Statistic(
        "grad_norm",
        "Gradient norm",
        "grad",
        f"L2 norm over {_GRAD}",
        ("grad_count", "grad_sumsq"),
        rules=(
            "nonfinite",
            "exploding_depth",
            "exploding_steps",
            "vanishing",
            "gradient_blocked",
            "no_gradient",
        ),
    ),
    Statistic(
        "grad_mean",
        "Gradient mean",
        "grad",
        f"mean over {_GRAD}",
        ("grad_count", "grad_total"),
        no_rule=f"{_NOT_A_RULE} (a signed mean cancels: the norm carries the flow)",
    ),
    Statistic(
        "grad_std",
        "Gradient standard deviation",
        "grad",
        f"population standard deviation over {_GRAD}",
        ("grad_count", "grad_total", "grad_sumsq"),
        no_rule=f"{_NOT_A_RULE} (close to the norm over the square root of the count)",
    ),
    Statistic(
        "grad_absmax",
        "Largest gradient magnitude",
        "grad",
        f"max |g| over {_GRAD}",
        ("grad_count", "grad_absmax"),
        rules=("gradient_blocked",),
    ),
    Statistic(
        "grad_nonfinite",
        "Non-finite gradient count",
        "grad",
        f"count of inf and NaN over {_GRAD}",
        ("grad_count", "grad_nonfinite"),
        rules=("nonfinite", "gradient_blocked", "no_gradient"),
    ),
    Statistic(
        "weight_norm",
        "Weight norm",
        "weight",
        "L2 norm of the layer's own parameters before the update",
        ("weight_sumsq",),
        rules=("nonfinite",),
    ),
    Statistic(
        "update_ratio",
        "Update-to-weight ratio",
        "weight",
        "||P_after - P_before|| / ||P_before|| over the layer's own parameters",
        ("weight_sumsq", "update_sumsq"),
        no_rule=f"{_NOT_A_RULE} (its healthy range depends on the optimizer and schedule)",
    ),
    Statistic(
        "weight_frozen_frac",
        "Share of frozen parameters",
        "weight",
        "share of the elements of the layer's own parameters with requires_grad=False",
        ("weight_count", "weight_frozen"),
        rules=("no_gradient",),
    ),
    Statistic(
        "act_mean",
        "Activation mean",
        "act",
        f"mean over {_ACT}",
        ("act_count", "act_total"),
        no_rule=f"{_NOT_A_RULE} (normalised layers centre it by design)",
    ),
    Statistic(
        "act_std",
        "Activation standard deviation",
        "act",
        f"population standard deviation over {_ACT}",
        ("act_count", "act_total", "act_spread"),
        no_rule=f"{_NOT_A_RULE} (its scale is the architecture's choice)",
    ),
    Statistic(
        "act_absmax",
        "Largest activation magnitude",
        "act",
        f"max |x| over {_ACT}",
        ("act_count", "act_absmax"),
        rules=("nonfinite", "no_gradient"),
    ),
    Statistic(
        "act_zero_frac",
        "Fraction of zero activations",
        "act",
        f"share of exact zeros over {_ACT}",
        ("act_count", "act_nonzeros"),
        rules=("dead", "no_gradient"),
    ),
    Statistic(
        "act_pos_frac",
        "Share of units ever positive",
        "act",
        f"share of {_UNITS} that are > 0 in at least one sampled row of some call",
        ("act_units", "act_pos_units"),
        rules=("dead", "no_gradient"),
    ),
    Statistic(
        "act_kurtosis",
        "Activation kurtosis",
        "act",
        f"Pearson's kurtosis E[(x - mean)^4] / var^2 over {_ACT} (3 for a Gaussian)",
        ("act_count", "act_total", "act_spread", "act_moment4"),
        rules=("kurtosis_growing",),
    ),
    Statistic(
        "act_max_rms",
        "Largest activation over RMS",
        "act",
        f"max |x| / sqrt(E[x^2]) over {_ACT}",
        ("act_count", "act_total", "act_spread", "act_absmax"),
        no_rule=f"{_NOT_A_RULE} (act_kurtosis carries the trend: a peak ratio is noisy)",
    ),
    Statistic(
        "act_outlier_channel",
        "Outlier channel (largest RMS)",
        "act",
        f"index of the unit of largest RMS among {_UNITS}, its RMS over every sampled row of "
        "every call",
        ("act_unit_sumsq",),
        rules=("kurtosis_growing",),  # its finding names the channel
    ),
    Statistic(
        "act_grad_norm",
        "Backpropagated signal norm",
        "act_grad",
        "L2 norm of dL/dO over every element of the layer's output gradients, all its calls",
        ("act_grad_calls", "act_grad_sumsq"),
        rules=(
            "signal_vanishing_depth",
            "signal_exploding_depth",
            "signal_collapse",
            "gradient_blocked",
        ),
    ),
    Statistic(
        "act_grad_zero_frac",
        "Share of units with zero gradient",
        "act_grad",
        f"share of {_UNITS} whose gradient dL/dO is exactly zero in every row of the batch",
        ("act_grad_units", "act_grad_nonzero_units"),
        rules=("dead", "gradient_blocked"),
    ),
    Statistic(
        "gns_small_sq",
        "Small-batch squared gradient norm",
        "gns",
        f"mean over the step's small batches of the squared norm of their mean gradient, {_NOISE}",
        ("gns_small_sumsq", "gns_batches", "gns_rows", "gns_large_count"),
        rules=("batch_above_noise_scale",),
    ),
    Statistic(
        "gns_large_sq",
        "Large-batch squared gradient norm",
        "gns",
        f"squared norm of the step's gradient (all small batches together), {_NOISE}",
        ("gns_large_sumsq", "gns_large_count"),
        rules=("batch_above_noise_scale",),
    ),
    Statistic(
        "gns_small_batch",
        "Small batch size",
        "gns",
        "rows of a small batch (the harmonic mean over the step's small batches)",
        ("gns_batches", "gns_inv_rows", "gns_large_count"),
        rules=("batch_above_noise_scale",),
    ),
    Statistic(
        "gns_large_batch",
        "Large batch size",
        "gns",
        "rows of the step's batch, on all ranks",
        ("gns_rows", "gns_large_count"),
        rules=("batch_above_noise_scale",),
    ),
)

BY_NAME = {s.name: s for s in STATISTICS}
ALL_STATS = tuple(BY_NAME)  # the canonical order: a run file's datasets follow it


def names_in(group: str) -> tuple[str, ...]:
    """The statistics of one group (a key of GROUPS), in canonical order."""
    if group not in GROUPS:
        raise ValueError(f"unknown statistic group {group!r}; groups: {', '.join(GROUPS)}")
    return tuple(s.name for s in STATISTICS if s.group == group)


def read_by(rule: str) -> tuple[str, ...]:
    """The statistics a diagnosis rule reads (a finding kind), in canonical order."""
    return tuple(s.name for s in STATISTICS if rule in s.rules)


# The probe's own statistics (`gradscope probe`), name -> title: its verdict reads them, not
# the diagnosis. (The recorder's statistics a probe file also holds,
# grad_norm, weight_norm, update_ratio and act_grad_norm, keep their names and titles.)
PROBE_STATS = {
    "chan_sq_mean": "Average channel squared mean",  # mean over channels of (channel mean)^2
    "chan_var": "Average channel variance",  # mean over channels of the channel's variance
    "res_var": "Residual-branch average channel variance",  # residual blocks only
    "skip_var": "Skip-path average channel variance",  # residual blocks only
    "res_ratio": "Residual-branch / skip variance",  # res_var / skip_var
    "act_abs_mean": "Mean absolute activation",  # mean |x| over every output element
    "dead_frac": "Fraction of dead units",  # channels that are zero for every input
}


def title(name: str) -> str:
    """A statistic in words ("Gradient norm"); a name gradscope does not know stays as is."""
    known = BY_NAME.get(name)
    if known is not None:
        return known.title
    return PROBE_STATS.get(name, name)


def resolve_stats(stats) -> tuple[str, ...]:
    """Validate a user's selection of statistics; None means all. Keeps the canonical order."""
    if stats is None:
        return ALL_STATS
    if isinstance(stats, str):
        stats = [stats]
    unknown = [s for s in stats if s not in BY_NAME]
    if unknown:
        raise UsageError(f"unknown statistic(s) {unknown}; available: {', '.join(ALL_STATS)}")
    chosen = set(stats)
    if not chosen:
        raise UsageError(f"no statistic selected; available: {', '.join(ALL_STATS)}")
    return tuple(s for s in ALL_STATS if s in chosen)
