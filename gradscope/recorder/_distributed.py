"""Data parallelism for the recorder: which parameters are sharded, the ranks' agreement at
attach, and the cross-rank reductions of a record (a few collectives, none per layer)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gradscope.errors import UsageError
from gradscope.recorder._stats import host_to_device, pick_largest_units
from gradscope.recorder._units import UnitLayout, placement
from gradscope.recorder._wrappers import local_part
from gradscope.statistics import RAW_SUMS

# Raw per-layer sums of parameters (gradient_sums, weight_sums): under DDP every rank holds the
# whole reduced gradient, so they need no collective; sharded layers add every rank's shard.
PARAM_SUMS = tuple(s.name for s in RAW_SUMS.values() if s.source == "parameters")
# reduced with MAX (every other raw sum with SUM), each with the count that says it has values
MAXIMA = {s.name: s.counted_by for s in RAW_SUMS.values() if s.combine == "max"}
# sums of squared output gradients: DDP and FSDP average the ranks' losses
LOSS_SCALED = tuple(s.name for s in RAW_SUMS.values() if s.loss_scaled)
# counts of flagged units and of units: formed from per-unit flags OR-ed across ranks
# and the index of a layer's unit of largest RMS: formed from per-unit sums added across ranks
UNIT_SUMS = tuple(s.name for s in RAW_SUMS.values() if s.combine in ("units", "any", "argmax"))
OUT_OF_SCOPE = (
    "gradscope records data parallelism (DDP, FSDP2 fully_shard, FSDP1 with "
    "use_orig_params=True) over all ranks of the default process group; tensor, pipeline "
    "and hybrid-sharded (HSDP) parallelism are not supported"
)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under torch.distributed; (0, 1) without it."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_path(path: str, rank: int) -> str:
    """The run file of one rank's local statistics: `run.h5` -> `run.rank1.h5`."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}.rank{rank}{suffix or '.h5'}"


def data_parallel_kind(model: nn.Module) -> str:
    """How `model` is data-parallel: the wrapper's name, or "none"."""
    kinds = []
    for module in model.modules():
        for cls, name in (
            (_class("torch.nn.parallel.distributed", "DistributedDataParallel"), "DDP"),
            (_class("torch.distributed.fsdp", "FSDPModule"), "FSDP2 (fully_shard)"),
            (_class("torch.distributed.fsdp", "FullyShardedDataParallel"), "FSDP1"),
        ):
            if cls is not None and isinstance(module, cls) and name not in kinds:
                kinds.append(name)
    return " + ".join(kinds) or "none"


def sharded_layers(model: nn.Module, modules, world: int) -> list[bool]:
    """Per watched layer: True when its parameters are sharded over the ranks (FSDP2 DTensors
    along dim 0, FSDP1 full or gradient-op sharding), False when each rank holds them whole.

    Raises UsageError for what gradscope cannot reduce exactly: a DTensor sharded otherwise
    (tensor parallelism, HSDP), FSDP1 without use_orig_params, a wrapper over a process group
    smaller than the world, or a layer mixing sharded and whole parameters.
    """
    _check_process_groups(model, world)
    fsdp1 = _fsdp1_sharded(model)
    fsdp2 = _class("torch.distributed.fsdp", "FSDPModule")
    has_fsdp2 = fsdp2 is not None and any(isinstance(m, fsdp2) for m in model.modules())
    flags = []
    for name, module in modules:
        kinds = set()
        for param_name, p in module.named_parameters(recurse=False):
            if local_part(p) is not p:
                _check_dtensor(f"{name}.{param_name}", p, world, has_fsdp2)
                kinds.add(True)
            else:
                kinds.add(id(p) in fsdp1)
        if len(kinds) > 1:
            raise UsageError(
                f"layer {name!r} has both sharded and whole parameters; gradscope needs each "
                "layer's parameters sharded alike (wrap the module as a whole)"
            )
        flags.append(kinds == {True})
    return flags


def contributed_numels(modules, sharded: list[bool], rank: int) -> list[int]:
    """Per layer, the parameter elements this rank adds to the whole-model count: its shard of
    a sharded layer; a whole layer counts on rank 0 only."""
    return [
        sum(local_part(p).numel() for p in module.parameters(recurse=False))
        if is_sharded or rank == 0
        else 0
        for (_, module), is_sharded in zip(modules, sharded, strict=True)
    ]


def agree_at_attach(signature, numels: list[int], failure: BaseException | None, step: int):
    """Every rank's attach meets here (one all_gather): if any rank failed, every rank raises
    (the failed rank its own error); ranks that watch differently raise; otherwise returns the
    whole-model parameter count per layer and rank 0's starting step."""
    dist = torch.distributed
    gathered = [None] * dist.get_world_size()
    reason = None if failure is None else f"{type(failure).__name__}: {failure}"
    dist.all_gather_object(gathered, (signature, numels, reason, step))
    if failure is not None:
        raise failure
    for rank, (_, _, other, _) in enumerate(gathered):
        if other is not None:
            raise UsageError(f"gradscope.attach failed on rank {rank} ({other}); see its error")
    for rank, (other, _, _, _) in enumerate(gathered):
        if other != gathered[0][0]:
            raise UsageError(
                f"rank {rank} attaches differently from rank 0 (layers, stats, every, "
                "batch_sample or sharding differ); call gradscope.attach with the same model "
                "and arguments on every rank"
            )
    totals = [sum(column) for column in zip(*(numels for _, numels, _, _ in gathered), strict=True)]
    return totals, gathered[0][3]


class RecordReduction:
    """Adds one record's raw per-layer sums across ranks: a SUM of every sum stacked into one
    tensor and a MAX of the maxima (issued together), then a SUM of the activations' spreads
    about the global mean and of the per-unit flags. Three collectives per record whatever
    the depth; none per layer.

    Output-gradient sums of squares count 1/world^2: DDP and FSDP average gradients over the
    ranks, so the loss the optimizer sees is the mean of the ranks' losses. Parameter sums are
    reduced only when some layer is sharded; a whole layer's sums come from rank 0 alone.

    Unit flags (act_pos_frac, act_grad_zero_frac) are OR-ed unit by unit, in a layout of the
    units the ranks agree on once, at the first record that has them (one all_gather of the
    layouts: units are channels and features, fixed by the model, not by the batch). A layer
    whose units on some rank are not in that layout (a shared module called at a new width
    later) records NaN for those statistics.
    """

    def __init__(self, rank: int, world: int, sharded: list[bool], device):
        self.rank, self.world = rank, world
        self.reduces_params = any(sharded)
        share = [1.0 if is_sharded or rank == 0 else 0.0 for is_sharded in sharded]
        self._param_share = torch.tensor(share, dtype=torch.float64, device=device)
        self._n_layers = len(sharded)
        self._agreed: dict[str, UnitLayout] = {}  # per flagged-unit sum, once
        self._placed: dict[tuple, tuple] = {}  # (name, local keys) -> placement on the device
        self.bytes_per_record = 0  # bytes of the tensors the last record reduced

    def reduce(
        self,
        sums: dict[str, torch.Tensor],
        moments_about: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None,
        unit_flags: dict[str, tuple[UnitLayout, torch.Tensor, torch.Tensor]] | None = None,
        unit_squares: dict[str, tuple] | None = None,
    ) -> dict[str, torch.Tensor]:
        """`sums` (this rank's, [L] float64 each) added across ranks, maxima maxed; with
        `moments_about(mean)`, also act_spread and act_moment4, the activations' squared and
        fourth-power deviations from the global mean; with `unit_flags` (flagged-unit sum ->
        this rank's layout, its flag values and their canonical positions), the unit counts
        from flags OR-ed across ranks; with `unit_squares` (act_unit_sumsq -> this rank's
        layout, per-unit sums of squares, their canonical positions and each canonical unit's
        element count), per layer the unit of largest RMS over every rank's rows. Every rank
        must call it at every record, with the same keys."""
        dist = torch.distributed
        unit_flags = unit_flags or {}
        unit_squares = unit_squares or {}
        keys = sorted(
            k for k in sums if (self.reduces_params or k not in PARAM_SUMS) and k not in UNIT_SUMS
        )
        added = [k for k in keys if k not in MAXIMA]
        maxed = [k for k in keys if k in MAXIMA]
        rows = [self._share(k, sums[k]) for k in added]
        rows += [self._nan_values(k, sums) for k in maxed]  # a NaN anywhere stays NaN
        placed = {name: self._place(name, *unit_flags[name]) for name in sorted(unit_flags)}
        for name in placed:  # per layer: ranks that saw units, ranks with units not agreed
            rows += [(sums[RAW_SUMS[name].counted_by] > 0).double(), placed[name][1]]
        squared = {name: self._place_squares(name, *unit_squares[name]) for name in unit_squares}
        rows += [missing for _, _, missing, _ in squared.values()]
        totals = torch.stack(rows)
        pending = [dist.all_reduce(totals, async_op=True)]
        if maxed:
            peaks = torch.stack([self._peak(k, sums[k]) for k in maxed])
            pending.append(dist.all_reduce(peaks, op=dist.ReduceOp.MAX, async_op=True))
        for work in pending:
            work.wait()
        reduced = dict(sums)
        reduced.update(zip(added, totals[: len(added)], strict=True))
        for i, k in enumerate(maxed):
            nan_anywhere = totals[len(added) + i] > 0
            peak = torch.where(torch.isinf(peaks[i]) & (peaks[i] < 0), torch.nan, peaks[i])
            reduced[k] = torch.where(nan_anywhere, torch.nan, peak)
        self.bytes_per_record = totals.numel() * 8 + (peaks.numel() * 8 if maxed else 0)
        last = totals[len(added) + len(maxed) :]  # the placed flags' and squares' layer rows
        parts = [flags for flags, _, _ in placed.values()]
        parts += [part for values, counts, _, _ in squared.values() for part in (values, counts)]
        about = None
        if moments_about is not None and "act_total" in reduced:
            about = moments_about(reduced["act_total"] / reduced["act_count"])
            parts.insert(0, torch.cat(list(about.values())))
        if parts:
            joined = torch.cat(parts)
            dist.all_reduce(joined)
            self.bytes_per_record += joined.numel() * 8
            for name in about or ():
                reduced[name], joined = joined[: self._n_layers], joined[self._n_layers :]
            for i, (name, (flags, _, counts)) in enumerate(placed.items()):
                ored, joined = joined[: len(flags)], joined[len(flags) :]
                seen, missing = last[2 * i], last[2 * i + 1]
                units, flagged = counts(ored)
                units = torch.where(seen > 0, units, 0.0)  # a layer no rank called: NaN shares
                reduced[RAW_SUMS[name].counted_by] = torch.where(missing > 0, torch.nan, units)
                reduced[name] = flagged
            for i, (name, (values, _, _, largest)) in enumerate(squared.items()):
                size = len(values)
                merged, counts, joined = joined[:size], joined[size : 2 * size], joined[2 * size :]
                missing = last[2 * len(placed) + i]
                reduced[name] = torch.where(missing > 0, torch.nan, largest(merged, counts))
        return reduced

    def _agree(self, name: str, layout: UnitLayout) -> UnitLayout | None:
        """The units the ranks agreed on for `name` (one all_gather of the layouts, at the
        first record where some rank has units); None while no rank has any."""
        if name not in self._agreed:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, layout.keys.tolist())
            keys = [k for rank in gathered for k in rank]
            keys = np.unique(np.array(keys, dtype=np.int64).reshape(-1, 3), axis=0)
            if not len(keys):  # no rank has units yet: agree at a later record
                return None
            self._agreed[name] = UnitLayout(keys)
        return self._agreed[name]

    def _placement(self, name: str, layout: UnitLayout, agreed: UnitLayout, device):
        """Where this rank's units sit in the agreed layout, on the device (cached): the local
        units found there, their positions there, per layer 1.0 where this rank has units not
        in it, the agreed units per layer, and the layer and index of each agreed unit."""
        key = (name, layout.keys.tobytes(), str(device))
        if key not in self._placed:
            kept, at, missing = placement(layout, agreed, self._n_layers)
            self._placed[key] = (
                host_to_device(kept, torch.long, device),
                host_to_device(at, torch.long, device),
                host_to_device(missing, torch.float64, device),
                host_to_device(agreed.units_per_layer(self._n_layers), torch.float64, device),
                host_to_device(agreed.layer_of, torch.long, device),
                host_to_device(agreed.unit_index, torch.long, device),
                (kept, at),
            )
        return self._placed[key]

    def _place(self, name: str, layout: UnitLayout, values: torch.Tensor, at: torch.Tensor):
        """This rank's flags [agreed units] (float64, 0 where it saw none) in the layout the
        ranks agreed on, per layer [L] 1.0 where it has units not in that layout, and a
        function turning OR-ed flags into per-layer (units, flagged units)."""
        flags = torch.zeros(layout.size, device=values.device).index_add_(
            0, at, values.ne(0).float()
        )
        agreed = self._agree(name, layout)
        if agreed is None:
            nothing = torch.zeros(self._n_layers, dtype=torch.float64, device=flags.device)
            return flags.new_zeros(0, dtype=torch.float64), nothing, lambda _: (nothing,) * 2
        device = flags.device
        kept, at, missing, units, layer_of, _, _ = self._placement(name, layout, agreed, device)
        placed = torch.zeros(agreed.size, dtype=torch.float64, device=device)
        placed.index_add_(0, at, (flags[kept] > 0).double())

        def counts(ored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flagged = torch.zeros(self._n_layers, dtype=torch.float64, device=device)
            return units, flagged.index_add_(0, layer_of, (ored > 0).double())

        return placed, missing, counts

    def _place_squares(self, name: str, layout: UnitLayout, values, at, elements: np.ndarray):
        """This rank's per-unit sums of squares and element counts [agreed units] (float64)
        in the layout the ranks agreed on, per layer [L] 1.0 where it has units not in that
        layout, and a function turning their sums over ranks into each layer's unit of
        largest RMS (NaN for a layer without units)."""
        device = values.device
        nothing = torch.zeros(self._n_layers, dtype=torch.float64, device=device)
        agreed = self._agree(name, layout)
        if agreed is None:
            empty = nothing.new_zeros(0)
            return empty, empty, nothing, lambda *_: torch.full_like(nothing, torch.nan)
        kept, at_agreed, missing, _, layer_of, unit_index, host = self._placement(
            name, layout, agreed, device
        )
        local = torch.zeros(layout.size, dtype=torch.float64, device=device)
        local.index_add_(0, at, values.double())
        placed = torch.zeros(agreed.size, dtype=torch.float64, device=device)
        placed.index_add_(0, at_agreed, local[kept])
        counts = np.zeros(agreed.size)
        np.add.at(counts, host[1], elements[host[0]])

        def largest(merged: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
            every = torch.arange(len(merged), device=device)
            return pick_largest_units(merged, every, elements, layer_of, unit_index, nothing)

        return placed, host_to_device(counts, torch.float64, device), missing, largest

    def _share(self, key: str, values: torch.Tensor) -> torch.Tensor:
        """What this rank adds for `key`: parameter sums of whole layers only on rank 0."""
        if key in PARAM_SUMS:
            return values * self._param_share
        if key in LOSS_SCALED:
            return values / self.world**2
        return values

    def _nan_values(self, key: str, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        """1.0 where this rank's maximum is NaN because a value was (not for want of values)."""
        nan = torch.isnan(sums[key]) & (sums[MAXIMA[key]] > 0)
        if key in PARAM_SUMS:
            nan &= self._param_share > 0
        return nan.double()

    def _peak(self, key: str, values: torch.Tensor) -> torch.Tensor:
        """What this rank offers to the MAX: -inf for nothing (no values, NaN, or a whole
        layer's parameters on ranks other than 0)."""
        keep = ~torch.isnan(values)
        if key in PARAM_SUMS:
            keep &= self._param_share > 0
        return torch.where(keep, values, -torch.inf)


def _class(module_name: str, class_name: str):
    """A class from a torch module if that module was imported (else no instance exists)."""
    module = sys.modules.get(module_name)
    return getattr(module, class_name, None) if module is not None else None


def _check_dtensor(name: str, p, world: int, has_fsdp2: bool) -> None:
    """Accept FSDP2's sharding: dim 0 over a 1-D mesh of every rank, under fully_shard."""
    mesh, placements = p.device_mesh, p.placements
    along_dim0 = len(placements) == 1 and placements[0].is_shard(0)
    if has_fsdp2 and mesh.ndim == 1 and mesh.size() == world and along_dim0:
        return
    where = "" if has_fsdp2 else ", outside fully_shard"
    raise UsageError(
        f"parameter {name!r} is a DTensor with placements {tuple(placements)} on a mesh of "
        f"shape {tuple(mesh.shape)} (world {world}){where}: {OUT_OF_SCOPE}"
    )


def _check_process_groups(model: nn.Module, world: int) -> None:
    """DDP and FSDP1 wrappers must span the world: the reductions run over it."""
    for cls in (
        _class("torch.nn.parallel.distributed", "DistributedDataParallel"),
        _class("torch.distributed.fsdp", "FullyShardedDataParallel"),
    ):
        if cls is None:
            continue
        for module in model.modules():
            group = getattr(module, "process_group", None) if isinstance(module, cls) else None
            if group is not None and group.size() != world:
                raise UsageError(
                    f"{cls.__name__} over a process group of {group.size()} of {world} ranks: "
                    f"{OUT_OF_SCOPE}"
                )


def _fsdp1_sharded(model: nn.Module) -> set[int]:
    """Ids of the parameters FSDP1 shards over the ranks (FULL_SHARD or SHARD_GRAD_OP)."""
    fsdp = _class("torch.distributed.fsdp", "FullyShardedDataParallel")
    if fsdp is None:
        return set()
    from torch.distributed.fsdp import ShardingStrategy

    sharded: dict[int, bool] = {}
    for module in model.modules():  # outer wrappers first: an inner one decides for its own
        if not isinstance(module, fsdp):
            continue
        strategy = module.sharding_strategy
        if strategy not in (
            ShardingStrategy.FULL_SHARD,
            ShardingStrategy.SHARD_GRAD_OP,
            ShardingStrategy.NO_SHARD,
        ):
            raise UsageError(f"FullyShardedDataParallel with {strategy.name}: {OUT_OF_SCOPE}")
        ignored = {id(p) for p in getattr(module, "_ignored_params", ())}
        for name, p in module.named_parameters():
            if getattr(p, "_is_flat_param", False):  # how FSDP1 marks its FlatParameter
                raise UsageError(
                    f"FullyShardedDataParallel without use_orig_params=True keeps the layers' "
                    f"parameters in flat parameters ({name}); wrap with use_orig_params=True"
                )
            if id(p) not in ignored:
                sharded[id(p)] = strategy != ShardingStrategy.NO_SHARD
    return {pid for pid, is_sharded in sharded.items() if is_sharded}
