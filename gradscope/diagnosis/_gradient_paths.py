"""Where the gradient does not go: dead units, a blocked path, layers that never had one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradscope.diagnosis._findings import Finding, nanmedian, recent_rows, since_step


@dataclass
class LayerRows:
    """What a run says, row by row (block-averaged records) and layer by layer, about where
    the gradient went. A None field: the run does not record what it is read from."""

    steps: np.ndarray  # [rows] the first step of each row
    names: np.ndarray  # [L] layer names, depth order
    has_params: np.ndarray  # [L] the layer owns parameters
    had_grad: np.ndarray | None  # [rows, L] its parameters had a gradient (maybe NaN/inf)
    grad_zero: np.ndarray | None  # [rows, L] that gradient was exactly zero
    grad_nonfinite: np.ndarray | None  # [rows, L] it held inf or NaN
    signal_none: np.ndarray | None  # [rows, L] no gradient reached its outputs
    signal_zero: np.ndarray | None  # [rows, L] the gradient of every output unit was zero
    called: np.ndarray | None  # [rows, L] it ran in a grad-enabled forward pass
    frozen: np.ndarray | None  # [rows, L] every parameter element has requires_grad=False
    dead: np.ndarray | None  # [rows, L] the share of its units that are dead (see dead_share)
    zero_frac: np.ndarray | None  # [rows, L] act_zero_frac (the rule for runs without units)


def read_layer_rows(run, max_records: int) -> LayerRows:
    """The rows `gradient_path_findings` judges, from the statistics the run records."""
    stats = set(run.stats)
    steps = None

    def read(stat: str) -> np.ndarray | None:
        nonlocal steps
        if stat not in stats:
            return None
        got_steps, values = run.read(stat, max_records=max_records)
        steps = np.asarray(got_steps, dtype=np.int64)
        return np.asarray(values, dtype=np.float64)

    grad_norm, absmax = read("grad_norm"), read("grad_absmax")
    count = read("grad_nonfinite")  # NaN exactly where a layer had no gradient
    presence = count if count is not None else grad_norm
    had_grad = None if presence is None else ~np.isnan(presence)
    nonfinite = None
    if count is not None or grad_norm is not None:
        nonfinite = np.zeros_like(had_grad)
        if count is not None:
            nonfinite |= np.nan_to_num(count) > 0
        if grad_norm is not None:
            nonfinite |= np.isinf(grad_norm) | (had_grad & np.isnan(grad_norm))
    exact = absmax if absmax is not None else grad_norm
    grad_zero = None
    if had_grad is not None:
        grad_zero = had_grad & (exact == 0) if exact is not None else np.zeros_like(had_grad)

    signal_norm, zero_units = read("act_grad_norm"), read("act_grad_zero_frac")
    # NaN gradients make act_grad_norm NaN too; the zero share is NaN only without a gradient
    reached = zero_units if zero_units is not None else signal_norm
    signal_none = None if reached is None else np.isnan(reached)
    if zero_units is not None:
        signal_zero = zero_units >= 1
    elif signal_norm is not None:
        signal_zero = signal_norm == 0
    else:
        signal_zero = None

    zero_frac, positive = read("act_zero_frac"), read("act_pos_frac")
    any_act = next((v for v in (zero_frac, positive) if v is not None), None)
    if any_act is None:
        any_act = read("act_absmax")  # NaN where a layer was not called (or output NaN)
    frozen_frac = read("weight_frozen_frac")
    return LayerRows(
        steps=steps,
        names=run.layers["name"].astype(str).to_numpy(),
        has_params=run.layers["params"].to_numpy() > 0,
        had_grad=had_grad,
        grad_zero=grad_zero,
        grad_nonfinite=nonfinite,
        signal_none=signal_none,
        signal_zero=signal_zero,
        called=None if any_act is None else ~np.isnan(any_act),
        frozen=None if frozen_frac is None else frozen_frac >= 1,
        dead=None if positive is None else dead_share(positive, zero_units, zero_frac),
        zero_frac=zero_frac,
    )


def dead_share(positive, zero_units, zero_frac) -> np.ndarray:
    """The share of a layer's units that are dead, per row: units never > 0 on the sample
    (1 - act_pos_frac) count when something confirms they do nothing: no gradient passes
    through them (act_grad_zero_frac: a pre-activation output whose ReLU never fires, at most
    that share), or the output is itself post-ReLU (act_zero_frac at least that share: such
    units output only zeros). A layer whose outputs are merely negative (logits, tanh, a
    layer upstream of a block) has no dead units."""
    never = 1.0 - positive
    confirmed = np.zeros_like(never)
    if zero_units is not None:  # NaN where no gradient reached the layer: not dead, cut off
        confirmed = np.minimum(never, zero_units)
    if zero_frac is not None:
        with np.errstate(invalid="ignore"):
            post_relu = zero_frac >= never - 1e-6
        confirmed = np.where(post_relu & (never > 0), never, confirmed)
    return np.where(np.isnan(positive), np.nan, confirmed)


def gradient_path_findings(rows: LayerRows, thresholds) -> tuple[list[Finding], list[str]]:
    """The dead, gradient_blocked and no_gradient findings, and the rules skipped (why)."""
    findings, skipped = _dead(rows, thresholds)
    if rows.had_grad is None:
        skipped.append("gradient_blocked/no_gradient: the run does not record grad_norm")
        return findings, skipped
    never_grad = ~rows.had_grad.any(axis=0) & rows.has_params
    unused = np.zeros(len(rows.names), dtype=bool)
    if rows.called is not None:  # a module whose weights are used without calling it (as
        # MultiheadAttention uses out_proj's) is not called, and has a gradient: not unused
        unused = ~rows.called.any(axis=0) & (never_grad | ~rows.has_params)
    frozen = np.zeros(len(rows.names), dtype=bool)
    if rows.frozen is not None:
        frozen = _recent_share(rows.frozen, thresholds) >= 0.5
    for j in np.flatnonzero(unused):
        findings.append(_no_gradient(rows.names[j], _UNUSED))
    for j in np.flatnonzero(never_grad & frozen & ~unused):
        findings.append(_no_gradient(rows.names[j], _FROZEN))
    if rows.frozen is None:  # a trainable layer cut from the loss looks like a frozen one
        for j in np.flatnonzero(never_grad & ~unused):
            findings.append(_no_gradient(rows.names[j], _FROZEN_OR_CUT))
        skipped.append(
            "gradient_blocked for layers that never had a gradient: the run does not record "
            "weight_frozen_frac (frozen and cut-off layers look alike without it)"
        )
    findings.extend(_blocked(rows, thresholds, unused, frozen))
    return findings, skipped


_UNUSED = (
    "never called in a forward pass with gradients enabled, at any step: unused (or run only "
    "under torch.no_grad())"
)
_FROZEN = "frozen: its parameters have requires_grad=False, so it has no gradient at any step"
_FROZEN_OR_CUT = (
    "no gradient at any step: frozen, or cut from the loss (the run does not record "
    "weight_frozen_frac to tell)"
)


def _no_gradient(name: str, why: str) -> Finding:
    return Finding("no_gradient", str(name), None, None, f"{name}: {why}")


def _recent_share(mask: np.ndarray, thresholds) -> np.ndarray:
    """Per layer, the share of the recent rows where `mask` [rows, L] holds."""
    return mask[recent_rows(len(mask), thresholds.recent_fraction)].mean(axis=0)


def _dead(rows: LayerRows, thresholds) -> tuple[list[Finding], list[str]]:
    """Layers whose share of dead units (recent median) is at or above dead_unit_frac; runs
    without per-unit statistics: act_zero_frac at or above dead_zero_frac."""
    findings, skipped = [], []
    if rows.dead is not None:
        limit, share = thresholds.dead_unit_frac, rows.dead
        describe = _dead_units_message
    elif rows.zero_frac is not None:
        limit, share = thresholds.dead_zero_frac, rows.zero_frac
        describe = _zero_activations_message
        skipped.append(
            "dead units per unit: the run does not record act_pos_frac (judged from "
            "act_zero_frac alone)"
        )
    else:
        return [], ["dead-unit rule: the run records neither act_pos_frac nor act_zero_frac"]
    typical = nanmedian(share[recent_rows(len(share), thresholds.recent_fraction)], axis=0)
    for j in np.flatnonzero(typical >= limit):
        step = since_step(share[:, j] >= limit, rows.steps)
        value = float(typical[j])
        message = describe(rows.names[j], value, step, limit)
        findings.append(Finding("dead", str(rows.names[j]), step, value, message))
    return findings, skipped


def _dead_units_message(name, share: float, step: int, limit: float) -> str:
    return (
        f"{name}: {share:.0%} of its units are dead since step {step} (never > 0 on the sample, "
        f"and no gradient passes through them; >= {limit:.0%})"
    )


def _zero_activations_message(name, share: float, step: int, limit: float) -> str:
    return (
        f"{name}: {share:.1%} of activations are zero (>= {limit:.0%}, since step {step}): "
        "dead units"
    )


def _blocked(rows: LayerRows, thresholds, unused, frozen) -> list[Finding]:
    """One gradient_blocked finding per stretch of consecutive layers (depth order) that get
    no gradient at all or only zeros (recent rows), at the stretch's deepest layer, naming
    what blocks it. Frozen layers only join a stretch; unused layers break it."""
    quiet = _quiet(rows)
    if quiet is None:
        return []
    member = (_recent_share(quiet, thresholds) >= 0.5) & ~unused
    trainable = rows.has_params & ~frozen
    if rows.frozen is None:  # old runs: only exact zeros say a trainable layer is blocked
        trainable &= rows.had_grad.any(axis=0)
    findings, j, n = [], 0, len(member)
    while j < n:
        if not member[j]:
            j += 1
            continue
        first = j
        while j + 1 < n and member[j + 1]:
            j += 1
        if trainable[first : j + 1].any():
            findings.append(_blocked_finding(rows, thresholds, first, j, quiet[:, j]))
        j += 1
    return findings


def _quiet(rows: LayerRows) -> np.ndarray | None:
    """[rows, L]: no gradient passes through the layer: its parameters' gradient is missing or
    exactly zero, and so is every output unit's (where each is recorded; a layer with
    neither is never quiet); a non-finite gradient is not quiet."""
    n_rows, n = rows.had_grad.shape
    params = np.where(rows.has_params, ~rows.had_grad | rows.grad_zero, True)
    known = np.broadcast_to(rows.has_params, (n_rows, n)).copy()
    if rows.signal_none is not None:
        signal = rows.signal_none | rows.signal_zero
        known |= True
    else:
        signal = np.ones((n_rows, n), dtype=bool)
    quiet = params & signal & known
    if rows.grad_nonfinite is not None:
        quiet &= ~rows.grad_nonfinite
    return quiet


def _blocked_finding(rows: LayerRows, thresholds, first: int, last: int, quiet) -> Finding:
    names = rows.names
    step = since_step(quiet, rows.steps)
    span = (
        f"{names[last]}"
        if first == last
        else f"{names[first]} .. {names[last]} ({last - first + 1} layers)"
    )
    after = names[last + 1] if last + 1 < len(names) else None
    window = recent_rows(len(rows.steps), thresholds.recent_fraction)
    zero = rows.grad_zero[window, last].mean() >= 0.5 if rows.has_params[last] else False
    if rows.signal_zero is not None:
        zero |= (rows.signal_zero[window, last] & ~rows.signal_none[window, last]).mean() >= 0.5
    dead = _dead_at(rows, thresholds, last)
    if zero and dead is not None:
        why = (
            f"its units are dead: {dead:.0%} of them are never > 0 on the sample and pass no "
            "gradient (a ReLU after it never fires)"
        )
    elif zero and after is not None and _dead_at(rows, thresholds, last + 1) is not None:
        share = _dead_at(rows, thresholds, last + 1)
        why = f"exactly zero gradient comes back from {after}, {share:.0%} of whose units are dead"
    elif zero:
        where = f"from {after}" if after is not None else "from the loss"
        why = (
            f"exactly zero gradient comes back {where} (a weight or gate at zero, or a step "
            "function after it)"
        )
    elif first > 0:
        why = (
            "nothing reaches it from the loss while the layers before it get a gradient: an "
            "unused branch (its output does not reach the loss), or a .detach() after it"
        )
    else:
        why = (
            "nothing reaches it from the loss: a .detach() or torch.no_grad() after it, or its "
            "output does not reach the loss"
        )
    message = f"{span}: no gradient since step {step}; blocked at {names[last]}: {why}"
    return Finding("gradient_blocked", str(names[last]), step, float(last - first + 1), message)


def _dead_at(rows: LayerRows, thresholds, j: int) -> float | None:
    """The recent median share of dead units of layer j, if at or above dead_unit_frac."""
    if rows.dead is None:
        return None
    share = float(nanmedian(rows.dead[recent_rows(len(rows.dead), thresholds.recent_fraction), j]))
    return share if share >= thresholds.dead_unit_frac else None
