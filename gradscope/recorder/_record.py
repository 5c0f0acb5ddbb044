"""One record from raw per-layer sums: the statistics finished and packed in depth order."""

from __future__ import annotations

import torch

from gradscope.recorder import _param_stats as P
from gradscope.recorder import _stats as S
from gradscope.recorder._kernels import CompiledOrEager
from gradscope.recorder._noise_scale import noise_scale_stats


def finish_record(
    sums: dict[str, torch.Tensor],
    owns: torch.Tensor | None,
    order: torch.Tensor,
    stats: tuple[str, ...],
) -> torch.Tensor:
    """[len(stats), L] float32, layers in depth order (`order`: module positions), from the
    raw per-layer sums of one rank or added across ranks (`act_spread` and `act_moment4`
    included when activations are recorded); `owns`: the layers owning parameters. NaN where
    a statistic has no value."""
    values: dict[str, torch.Tensor] = {}
    if "grad_count" in sums:
        values.update(P.gradient_stats_from_sums(sums))
    if "weight_sumsq" in sums:
        values.update(P.weight_stats_from_sums(sums, owns))
    if "act_count" in sums:
        values.update(S.activation_stats(sums))
    if "act_grad_sumsq" in sums:
        values["act_grad_norm"] = S.output_grad_norm(sums)
    values.update(S.unit_stats(sums))
    if "gns_batches" in sums:
        values.update(noise_scale_stats(sums))
    missing = torch.full_like(order, float("nan"), dtype=torch.float64)
    record = torch.stack([values.get(name, missing) for name in stats]).float()
    return record[:, order]


# The device path's: some forty element-wise ops fused into one kernel per record (a GPU is
# bound by launches); the CPU kernels' path runs `finish_record` as it is.
finish_record_fused = CompiledOrEager(finish_record, finish_record, "the record's statistics")
