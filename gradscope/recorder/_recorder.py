"""The Recorder: model and optimizer hooks that stream per-layer statistics to a run file."""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import nn

from gradscope.errors import NonFiniteError, UsageError
from gradscope.recorder import _distributed as D
from gradscope.recorder import _graph_ops as G
from gradscope.recorder import _param_stats as P
from gradscope.recorder import _stats as S
from gradscope.recorder._act_sums import ActivationSums, OutputGradSums
from gradscope.recorder._backward_order import GradientArrivals
from gradscope.recorder._compiled_code import forget_compiled_code
from gradscope.recorder._flight import AFTER_UPDATE
from gradscope.recorder._forward_hooks import ForwardHooks
from gradscope.recorder._kernels import kernel_choice
from gradscope.recorder._layer_selection import select_modules
from gradscope.recorder._noise_scale import NoiseScaleSums
from gradscope.recorder._record import finish_record, finish_record_fused
from gradscope.recorder._schedule import make_schedule
from gradscope.recorder._trips import NonFiniteTrips
from gradscope.recorder._units import unit_axis
from gradscope.recorder._wrappers import unwrap, user_type_name
from gradscope.statistics import RAW_SUMS, resolve_stats
from gradscope.store import RunWriter, open_run
from gradscope.store._failure import check_write_error_mode
from gradscope.store._metric_values import check_metric, metric_value
from gradscope.store._prepare import check_run_path

DEFAULT_BATCH_SAMPLE = 32  # rows of each output used for activation moments (not act_grad_norm)


class Recorder(NonFiniteTrips):
    """Records statistics of the watched modules of `model` at optimizer-step boundaries.

    Use `gradscope.attach(...)` to make one. A record for step s holds the gradients read just
    before the update of step s, the weights before it, the update it made, and the activations
    and output gradients of the forward/backward passes (with grad enabled) whose gradients that
    update used: those since the previous step, less the passes whose backward had run when
    `optimizer.zero_grad()` wiped their gradients (a step the AMP GradScaler skipped). A forward
    whose backward is still to come when `zero_grad` runs counts, so the order of zero_grad,
    forward and backward within a step does not matter.

    Under torch.distributed (DDP, FSDP2, FSDP1) every rank attaches, and a record holds what
    one process would record on the global batch: each record's per-layer raw sums are added
    across ranks in a few collectives (`_distributed.RecordReduction`); rank 0 writes the file,
    and with `all_ranks=True` every rank also writes its local statistics to `rank_path`.

    With `manual_gradients=True` the gradients are read when `read_gradients()` is called (a
    framework's before-optimizer-step hook) instead of in the optimizer's step pre-hook, which
    under `optimizer.step(closure)` runs before the closure's forward and backward.

    With `nonfinite` other than "off", the flight recorder (`_flight.FlightRecorder`) checks
    every update for an inf or NaN in a gradient or weight, and when it finds one replays the
    step to find where it first appeared (docs/nonfinite.md).
    """

    def __init__(
        self,
        model: nn.Module,
        path,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        every: int | Callable[[int], bool] = 1,
        stats=None,
        layers=None,
        batch_sample: int | None = DEFAULT_BATCH_SAMPLE,
        overwrite: bool = False,
        resume: bool = False,
        start_step: int | None = None,
        attrs: dict | None = None,
        flush_interval: float = 2.0,
        all_ranks: bool = False,
        manual_gradients: bool = False,
        nonfinite: str = "watch",
        on_write_error: str = "warn",
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"gradscope.attach needs a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.closed = False
        self._on_write_error = check_write_error_mode(on_write_error)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        self.path = os.fspath(path)
        self._check_nonfinite_mode(nonfinite, optimizer, manual_gradients)
        self.rank, self.world = D.rank_and_world()
        self._writes_global = self.rank == 0  # rank 0 writes the global statistics
        # with all_ranks every rank also writes its own, local statistics
        self.local_path = (
            D.rank_path(self.path, self.rank) if all_ranks and self.world > 1 else None
        )
        self._reduction: D.RecordReduction | None = None
        if self.world == 1:
            self._check_and_select(model, optimizer, every, stats, layers, batch_sample)
            self._check_paths(overwrite, resume)
            self._step = self._initial_step(resume, start_step)
            self._layer_numels = [
                sum(p.numel() for p in m.parameters(recurse=False)) for _, m in self._modules
            ]
        else:
            self._attach_on_every_rank(
                model, optimizer, every, stats, layers, batch_sample, overwrite, resume, start_step
            )

        self._want_act = any(s in S.ACT_STATS for s in self.stats)
        self._want_act_grad = any(s in S.ACT_GRAD_STATS for s in self.stats)
        # Under DDP only rank 0 needs parameter sums (every rank holds the reduced gradient),
        # unless this rank writes its own file or some layer is sharded.
        needs_params = self._writes_global or all_ranks or any(self._sharded)
        self._want_grad = needs_params and any(s in S.GRAD_STATS for s in self.stats)
        self._want_weight = needs_params and any(s in S.WEIGHT_STATS for s in self.stats)

        self._resume = resume
        self._overwrite = overwrite
        self._start_step = start_step if start_step is not None else self._step
        self._attrs = dict(attrs or {})
        self._attach_args = {
            "every": every if isinstance(every, int) else repr(every),
            "stats": list(self.stats),
            "layers": _describe_layers(layers),
            "batch_sample": batch_sample,
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        }
        self._flush_interval = flush_interval
        self._data_parallel = D.data_parallel_kind(model) if self.world > 1 else None
        self._manual_gradients = bool(manual_gradients)
        self._attach_args["manual_gradients"] = self._manual_gradients
        self._attach_args["nonfinite"] = nonfinite

        self._first_call: dict[int, int] = {}  # module position -> order of first call
        self._order: list[int] | None = None  # module positions in depth order, fixed at 1st step
        self._writer: RunWriter | None = None  # the global statistics (rank 0)
        self._local_writer: RunWriter | None = None  # this rank's own (all_ranks)
        self._pending_metrics: list[tuple[int, dict]] = []
        self._in_step = False  # a grad-enabled forward ran since the last step boundary
        self.kernels = kernel_choice()  # from $GRADSCOPE_KERNELS, fixed for this recorder
        axes = [unit_axis(module) for _, module in self._modules]  # where units are
        per_unit = {"act_pos_frac", "act_outlier_channel"} & set(self.stats)
        self._act = ActivationSums(  # this record's output sums
            batch_sample,
            self.kernels,
            axes if per_unit else None,
            positive="act_pos_frac" in per_unit,
            squares="act_outlier_channel" in per_unit,
        )
        self._act_grad = OutputGradSums(  # and their gradients'
            self.kernels, axes if "act_grad_zero_frac" in self.stats else None
        )
        self._unit_flags: dict[str, tuple] = {}  # this record's unit flags, for the ranks
        self._unit_squares: dict[str, tuple] = {}  # and its units' sums of squares
        self._reset_accumulators()
        self._due = self._schedule(self._step)
        # what a compiled graph's hooks read (dynamo guards on it: a graph with the ops, and one
        # without): the step is recorded, or the depth order is still to learn
        self._observing = True
        self._graph_key = G.register(self)  # how the ops in compiled graphs reach this recorder
        self._groups: P.ParamGroups | None = None
        self._before: P.WeightSnapshot | None = None
        self._grad_sums: dict | None = None
        self._device = model_device(model)
        self._depths: dict[int, int] | None = None  # module position -> depth, once fixed
        self._noise: NoiseScaleSums | None = None  # the gradient noise scale's sums
        if any(s in S.GNS_STATS for s in self.stats):
            self._noise = NoiseScaleSums(
                self._modules,
                self._sharded,
                self.kernels,
                self._device,
                self.world,
                reads_large_batch=needs_params,
            )
            if self._due:
                self._noise.arm()
        # host arrays (call layers, unit positions) as device tensors, cached: they recur
        self._on_device = S.DeviceLists(self._device)
        self._hooks = []  # the optimizer's
        self._in_update = False  # between the optimizer's step pre- and post-hooks
        self._muted = False  # the recorder's module hooks ignore calls (a replay's own)
        self._flight = self._flight_recorder(model, nonfinite)
        self._install_hooks()
        # until the depth order is fixed: places modules whose parameters are used uncalled
        self._arrivals = GradientArrivals([m for _, m in self._modules], self._sharded)
        for own in self._own_paths():
            _LIVE_PATHS[os.path.realpath(own)] = self
        for name, module in self._modules:
            _WATCHED[module] = (self, name)
        if optimizer is None and self._due and self._want_weight:
            self._before = P.weight_snapshot(self._param_groups(), self._device)

    def _check_and_select(self, model, optimizer, every, stats, layers, batch_sample) -> None:
        """Check the arguments and choose the watched modules of the unwrapped model."""
        if batch_sample is not None and (not isinstance(batch_sample, int) or batch_sample < 1):
            raise UsageError(f"batch_sample must be a positive int or None, got {batch_sample!r}")
        self.stats = resolve_stats(stats)
        self._schedule = make_schedule(every)
        self._batch_sample = batch_sample
        self._optimizer = optimizer
        # DDP's .module, FSDP1's wrapper, torch.compile's _orig_mod: the user's own model
        root = unwrap(model)
        self.model_class = user_type_name(root)
        self._modules = select_modules(root, layers)  # [(qualified name, module)]
        _check_not_watched(self._modules)
        self._sharded = (
            D.sharded_layers(model, self._modules, self.world)
            if self.world > 1
            else [False] * len(self._modules)
        )
        if self.world > 1 and "FSDP1" in D.data_parallel_kind(model):
            self.stats = _without_noise_scale(self.stats, stats is None)

    def _check_paths(self, overwrite: bool, resume: bool) -> None:
        for own in self._own_paths():
            _check_not_being_recorded(own)
            check_run_path(own, overwrite, resume)  # fail now, not at the first step

    def _own_paths(self) -> list[str]:
        """The run files this process writes."""
        own = [self.path] if self._writes_global else []
        return own + ([self.local_path] if self.local_path is not None else [])

    def _attach_on_every_rank(
        self, model, optimizer, every, stats, layers, batch_sample, overwrite, resume, start_step
    ) -> None:
        """Check and select on this rank, then agree with the others (one collective): an
        error on any rank stops every rank's attach, so no rank waits at a first record."""
        failure = signature = numels = None
        step = 0
        try:
            self._check_and_select(model, optimizer, every, stats, layers, batch_sample)
            self._check_paths(overwrite, resume)
            step = self._initial_step(resume and self._writes_global, start_step)
            signature = (
                [name for name, _ in self._modules],
                self.stats,
                every if isinstance(every, int) else "callable",
                batch_sample,
                self._sharded,
            )
            numels = D.contributed_numels(self._modules, self._sharded, self.rank)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, then it is raised
            failure = e
        self._layer_numels, self._step = D.agree_at_attach(signature, numels, failure, step)
        self._reduction = D.RecordReduction(
            self.rank, self.world, self._sharded, model_device(model)
        )

    # ----- public API -------------------------------------------------------------------------

    @property
    def current_step(self) -> int:
        """The optimizer step that the next record (or a forward now) belongs to."""
        return self._step

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the watched modules (in depth order once the first step is done)."""
        order = self._order if self._order is not None else range(len(self._modules))
        return [self._modules[i][0] for i in order]

    def step(self) -> None:
        """Mark an optimizer step done (only without `optimizer=`: call it after each update)."""
        self._check_open()
        if self._optimizer is not None:
            raise UsageError(
                "this recorder follows optimizer.step() itself; do not call rec.step() as well"
            )
        origin = None
        if self._flight is not None and not self._manual_gradients and self._flight.detect():
            origin = self._not_replayed(AFTER_UPDATE)  # the update has run
            self._report(origin)
        if self._due and self._want_grad and not self._manual_gradients:
            self._grad_sums = P.gradient_sums(self._param_groups(), self._device)
        self._finish_step()
        if self._due and self._want_weight:
            self._before = P.weight_snapshot(self._param_groups(), self._device)
        if origin is not None and self._flight.mode == "raise":
            raise NonFiniteError(origin)

    def read_gradients(self) -> bool:
        """Read the gradient statistics of the step in progress now; True if the step is recorded.

        Only with `manual_gradients=True`: call it after the step's last backward (and AMP
        unscaling) and before the update, e.g. from Lightning's `on_before_optimizer_step`.
        """
        self._check_open()
        if not self._manual_gradients:
            raise UsageError(
                "read_gradients() is for a recorder attached with manual_gradients=True; "
                "this one reads the gradients at optimizer.step() (or rec.step())"
            )
        if self._flight is not None and self._flight.detect():
            if self._in_update or self._optimizer is None:  # the update comes next: act now
                self._trip()
                return True
            self._pending_trip = True  # a GradScaler may yet skip the update
        if not self._due:
            return False
        if self._want_grad:
            self._grad_sums = P.gradient_sums(self._param_groups(), self._device)
        return True

    def log(self, step: int | None = None, **metrics: float) -> None:
        """Store scalar metrics against `step` (default: the step in progress or just finished).

        Each value is one real number: a Python or NumPy int or float, or a one-element tensor
        or array; inf and NaN are stored as they are. Anything else is a UsageError.
        """
        self._check_open()
        if not self._own_paths():  # a rank that writes no file (under torch.distributed)
            for name, value in metrics.items():
                check_metric(name, value)  # the error rank 0 raises, without reading tensors
            return
        if step is None:
            step = self._step if self._in_step or self._step == self._start_step else self._step - 1
        # note: a tensor is read with .item(), a host sync; pass floats to avoid it
        values = {name: metric_value(name, value) for name, value in metrics.items()}
        if not self._writers():
            self._pending_metrics.append((int(step), values))
        for writer in self._writers():
            writer.log(int(step), values)

    def close(self) -> None:
        """Remove every hook, flush and close the run file(s). Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self._forward_hooks.remove()
        if self._noise is not None:
            self._noise.disarm()
        if self._flight is not None:
            self._flight.close()
        self._arrivals.remove()
        G.unregister(self._graph_key)
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for _, module in self._modules:
            if _WATCHED.get(module, (None,))[0] is self:
                del _WATCHED[module]
        if self._optimizer is not None and "zero_grad" in vars(self._optimizer):
            del self._optimizer.zero_grad
        forget_compiled_code()
        try:
            self._ensure_writer()
            for writer in self._writers():
                writer.close()
        finally:
            for own in self._own_paths():
                if _LIVE_PATHS.get(os.path.realpath(own)) is self:
                    del _LIVE_PATHS[os.path.realpath(own)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----- hooks ------------------------------------------------------------------------------

    def _install_hooks(self) -> None:
        positions = range(len(self._modules))
        self._output_grad_hooks: dict[tuple[int, int], Callable] = {}  # (position, slot)
        self._forward_hooks = ForwardHooks(
            [module for _, module in self._modules], [self._forward_hook(i) for i in positions]
        )
        self._forward_hooks.everywhere()
        opt = self._optimizer
        if opt is not None:
            self._hooks.append(opt.register_step_pre_hook(self._before_update))
            self._hooks.append(opt.register_step_post_hook(self._after_update))
            original_zero_grad = opt.zero_grad

            # zero_grad wipes the gradients of the backward passes that ran since the last step
            # (one the AMP GradScaler skipped never reached optimizer.step()): drop their
            # forward and backward sums too, keeping forwards whose backward is still to come.
            def zero_grad(*args, **kwargs):
                self._count_skipped_update()
                self._drop_backpropagated()
                return original_zero_grad(*args, **kwargs)

            opt.zero_grad = zero_grad
        forget_compiled_code()

    def _forward_hook(self, position: int):
        def hook(module, inputs, output):
            if torch.compiler.is_compiling():  # dynamo is tracing: into the user's graph
                return self._graph_hook(position, output)
            if self.closed or self._muted:
                return
            # depth is forward call order whatever the grad mode (reentrant checkpointing runs
            # the forward under no_grad, and again under grad during the backward)
            self._note_first_call(position)
            if self._noise is not None and self._due and self._starts_forward(position):
                self._noise.forward_began()  # whatever the grad mode, as the depth order
            if not torch.is_grad_enabled():
                return  # evaluation: nothing is recorded
            self._in_step = True
            if not self._due:
                return
            tensors = S.floating_tensors(output)
            if not tensors:
                return
            if self._want_act:
                self._act.add(tensors, position)
            if self._noise is not None:
                self._noise.output(tensors)
            if self._want_act_grad:
                for slot, t in enumerate(tensors):
                    if t.requires_grad:
                        t.register_hook(self._output_grad_hook(position, slot))
            elif self._want_act:
                # Only to learn when the backward reaches this call (see _drop_backpropagated).
                for t in tensors:
                    if t.requires_grad:
                        t.register_hook(self._mark_backpropagated)
                        break

        return hook

    def _graph_hook(self, position: int, output):
        """The forward hook as dynamo traces it into a compiled graph. It reads one guarded
        value, `_observing`: steps that observe run a graph with the recorder's ops, the others
        the bare model's graph; each compiles once. The ops call `_observe_outputs` and
        `_observe_output_grad` at run time, which do what the eager hook and its tensor hooks do."""
        if not torch.is_grad_enabled():
            return None  # evaluation: nothing is recorded
        self._in_step = True  # a store dynamo replays after the graph (not a guard)
        if not self._observing:
            return None
        probe = self._want_act or self._want_act_grad or self._noise is not None
        return G.observe_in_graph(output, self._graph_key, position, probe)

    def _observe_outputs(self, outputs: list[torch.Tensor], position: int) -> None:
        """A compiled graph ran a watched call (`observe_outputs` op): its floating outputs."""
        if self.closed or self._muted:
            return
        self._note_first_call(position)
        if self._noise is not None and self._due and self._starts_forward(position):
            self._noise.forward_began()
        self._in_step = True
        if self._due and self._want_act and outputs:
            self._act.add(outputs, position)

    def _observe_output_grad(self, grad: torch.Tensor, position: int, slot: int) -> None:
        """A compiled backward reached watched output `slot` (`observe_output_grad` op)."""
        if self.closed or self._muted or not self._due:
            return
        if self._noise is not None:  # its rows: the call order is the depth order here
            self._noise.reached(grad, self._depth_of(position))
        if self._want_act_grad:
            self._output_grad_hook(position, slot)(grad)
        elif self._want_act:
            self._mark_backpropagated(grad)

    def _note_first_call(self, position: int) -> None:
        """A call of the watched module at `position`: until the depth order is fixed, the
        order of first calls is kept."""
        if self._order is None and position not in self._first_call:
            self._first_call[position] = len(self._first_call)

    def _output_grad_hook(self, position: int, slot: int):
        """The tensor hook of output `slot` of the module at `position` (made once)."""
        hook = self._output_grad_hooks.get((position, slot))
        if hook is None:

            def hook(grad):
                self._act.mark_backpropagated()
                self._act_grad.add(grad, position, slot)

            self._output_grad_hooks[position, slot] = hook
        return hook

    def _depth_of(self, position: int) -> int:
        """The depth of the module at `position` (its first call's rank before the order is
        fixed; past every called module for one never called)."""
        if self._order is None:
            rank = self._first_call.get(position)
            return len(self._modules) if rank is None else rank
        if self._depths is None:
            self._depths = {p: depth for depth, p in enumerate(self._order)}
        return self._depths[position]

    def _starts_forward(self, position: int) -> bool:
        """Whether the module at `position` is the first of a forward pass (the first called
        at the first step)."""
        if self._order is not None:
            return self._order[0] == position
        return self._first_call.get(position) == 0

    def _mark_backpropagated(self, grad) -> None:
        self._act.mark_backpropagated()

    def _drop_backpropagated(self) -> None:
        """The gradients are being zeroed: forget the passes whose backward already ran."""
        self._act.drop_backpropagated()
        self._act_grad.clear()
        if self._noise is not None:
            self._noise.clear()
        if self._flight is not None:
            self._flight.capture.drop_backpropagated()
        if self._manual_gradients:
            self._grad_sums = None  # read from the gradients being wiped (a skipped step)

    def _before_update(self, optimizer, args, kwargs) -> None:
        self._in_update = True
        if self._flight is not None and self._tripped_at_update():
            self._trip()
            return
        if not self._due:
            return
        groups = self._param_groups()
        if self._want_grad and not self._manual_gradients:
            self._grad_sums = P.gradient_sums(groups, self._device)
        if self._want_weight:
            self._before = P.weight_snapshot(groups, self._device)

    def _after_update(self, optimizer, args, kwargs) -> None:
        self._in_update = False
        self._give_back_skipped_gradients()
        self._finish_step()

    # ----- step boundary ----------------------------------------------------------------------

    def _finish_step(self) -> None:
        if self._due and self._want_grad and self._manual_gradients and self._grad_sums is None:
            raise UsageError(
                f"{self.path}: step {self._step} was updated without rec.read_gradients() "
                "(attached with manual_gradients=True): call it after the backward, before the "
                "optimizer step"
            )
        if self._order is None:
            self._fix_depth_order()
        if self._flight is not None:
            self._flight.capture.settle()  # after the first step, on the entries only
            self._flight.capture.clear()
        self._stepped_since_zero_grad = True
        self._in_update = False
        if self._due:
            self._take_record()
        for writer in self._writers():
            writer.check()  # a failed write: warned once, or raised from this step
        self._step += 1
        self._due = self._schedule(self._step) and not self._stopped_writing()
        self._observing = self._due  # the depth order is fixed from here on
        self._in_step = False
        self._reset_accumulators()
        if self._noise is not None:
            self._noise.clear()
            if self._due:
                self._noise.arm()
            else:
                self._noise.disarm()
        if self._due or not self._order:
            self._forward_hooks.everywhere()
        else:  # the first module's hook alone tells that the next step has begun
            self._forward_hooks.only(self._order[0])

    def _take_record(self) -> None:
        """Pack this step's record and hand it to the writer(s); under torch.distributed every
        rank joins the record's reductions, whether or not it writes."""
        sums = self._layer_sums()
        if self.local_path is not None:  # no noise scale: its large batch is the global one
            local = {k: v for k, v in sums.items() if not k.startswith("gns_")}
            self._write_record(self._ensure_writer()[1], self._pack_record(local))
        if self._reduction is not None:
            moments = self._act_moments if self._want_act else None
            sums = self._reduction.reduce(sums, moments, self._unit_flags, self._unit_squares)
        if self._writes_global:
            self._write_record(self._ensure_writer()[0], self._pack_record(sums))

    def _layer_sums(self) -> dict[str, torch.Tensor]:
        """This rank's raw per-layer sums for the record ([L] float64 each, module order): the
        same keys on every rank, zeros (NaN maxima) where this rank saw nothing."""
        n = len(self._modules)
        device = self._device
        sums: dict[str, torch.Tensor] = {}
        if self._want_grad and self._grad_sums is not None:
            sums.update(self._grad_sums)
        if self._want_weight and self._before is not None:
            sums.update(P.weight_sums(self._param_groups(), self._before, device))
        self._act_calls = None
        if self._want_act:
            if len(self._act):
                self._act_calls = (
                    self._act.per_call(device),
                    self._on_device(self._act.counts, torch.float64),
                    self._on_device(self._act.layers, torch.long),
                )
                sums.update(S.activation_layer_sums(*self._act_calls, n))
            else:
                none = (torch.zeros((0, S.ACT_SUMS_SIZE), device=device),) + _no_calls(device)
                sums.update(S.activation_layer_sums(*none, n))
        fused = not self.kernels.numba_for(device)
        self._unit_flags, self._unit_squares = {}, {}
        if "act_pos_frac" in self.stats:
            self._unit_flags["act_pos_units"] = self._act.unit_flags(self._on_device)
        if "act_outlier_channel" in self.stats:
            squares = self._unit_squares["act_unit_sumsq"] = self._act.unit_squares(self._on_device)
            sums["act_unit_sumsq"] = S.largest_units(*squares, n, self._on_device, fused)
        if self._want_act_grad:
            squares = self._act_grad.sums_of_squares(n, self._on_device)
            sums.update(S.output_grad_layer_sums(*squares))
        if "act_grad_zero_frac" in self.stats:
            self._unit_flags["act_grad_nonzero_units"] = self._act_grad.unit_flags(self._on_device)
        for flagged, unit_flags in self._unit_flags.items():
            units, count = S.unit_layer_sums(*unit_flags, n, self._on_device, fused)
            sums[RAW_SUMS[flagged].counted_by] = units
            sums[flagged] = count
        if self._noise is not None:
            sums.update(self._noise.layer_sums())
        self._grad_sums = None
        self._before = None
        return sums

    def _act_moments(self, mean: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per layer, this rank's activations' squared and fourth-power deviations from
        `mean` [L]: act_spread and act_moment4."""
        if self._act_calls is None:
            return {"act_spread": torch.zeros_like(mean), "act_moment4": torch.zeros_like(mean)}
        fused = not self.kernels.numba_for(self._device)
        moments = S.activation_moments_fused if fused else S.activation_moments
        return moments(*self._act_calls, mean)

    def _pack_record(self, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        """One [n_stats, n_layers] float32 tensor, layers in depth order, computed on the device
        from raw per-layer sums (this rank's, or added across ranks)."""
        device = self._device
        if "act_count" in sums and "act_spread" not in sums:  # this rank's own: about its mean
            sums = {**sums, **self._act_moments(sums["act_total"] / sums["act_count"])}
        owns = self._param_groups().owner_mask(device) if "weight_sumsq" in sums else None
        order = self._on_device(self._order, torch.long)
        finish = finish_record if self.kernels.numba_for(device) else finish_record_fused
        return finish(sums, owns, order, self.stats)

    def _write_record(self, writer: RunWriter, record: torch.Tensor) -> None:
        if record.device.type == "cpu":
            writer.append(self._step, record.numpy())
            return
        # Overlap the device->host copy with training: the writer thread waits for it.
        host = torch.empty(record.shape, dtype=record.dtype, pin_memory=True)
        host.copy_(record, non_blocking=True)
        done = torch.cuda.Event() if record.device.type == "cuda" else None
        if done is not None:
            done.record()

        def fetch():
            if done is not None:
                done.synchronize()
            return host.numpy()

        writer.append(self._step, fetch)

    def _fix_depth_order(self) -> None:
        called = sorted(self._first_call, key=self._first_call.get)
        self._order = self._arrivals.depth_order(called, len(self._modules))
        self._arrivals.remove()

    def _ensure_writer(self) -> tuple[RunWriter | None, RunWriter | None]:
        """The (global, local) writers this rank has, opened on first use."""
        if self._writers() or not self._own_paths():
            return self._writer, self._local_writer
        if self._order is None:
            self._fix_depth_order()
        layers = []
        for i in self._order:
            name, module = self._modules[i]
            layers.append(
                {"name": name, "type": user_type_name(module), "params": self._layer_numels[i]}
            )
        attrs = {
            "model_class": self.model_class,
            "attach_args": self._attach_args,
            **self._attrs,
        }
        if self.world > 1:
            attrs.update(world_size=self.world, data_parallel=self._data_parallel)

        def open_writer(path, extra):
            return RunWriter(
                path,
                layers=layers,
                stats=list(self.stats),
                attrs={**attrs, **extra},
                overwrite=self._overwrite,
                resume=self._resume,
                start_step=self._start_step if self._resume else None,
                flush_interval=self._flush_interval,
                on_write_error=self._on_write_error,
            )

        if self._writes_global:
            self._writer = open_writer(self.path, {})
        if self.local_path is not None:
            local = {"rank": self.rank, "statistics": f"local to rank {self.rank}"}
            self._local_writer = open_writer(self.local_path, local)
        for step, values in self._pending_metrics:
            for writer in self._writers():
                writer.log(step, values)
        self._pending_metrics.clear()
        return self._writer, self._local_writer

    def _writers(self) -> list[RunWriter]:
        return [w for w in (self._writer, self._local_writer) if w is not None]

    def _stopped_writing(self) -> bool:
        """True when no record can reach a file any more (its writing failed): records are
        then not even computed. Under torch.distributed every rank goes on computing them,
        for the reductions every rank joins."""
        writers = self._writers()
        return self.world == 1 and bool(writers) and all(w.stopped for w in writers)

    # ----- helpers ----------------------------------------------------------------------------

    def _param_groups(self) -> P.ParamGroups:
        if self._groups is None:
            self._groups = P.ParamGroups(
                [list(m.parameters(recurse=False)) for _, m in self._modules], self.kernels
            )
        return self._groups

    def _reset_accumulators(self) -> None:
        self._act.clear()
        self._act_grad.clear()

    def _initial_step(self, resume: bool, start_step: int | None) -> int:
        if start_step is not None:
            if start_step < 0:
                raise UsageError(f"start_step must be >= 0, got {start_step}")
            return start_step
        if resume and os.path.exists(self.path):
            with open_run(self.path) as run:
                steps = list(run.steps[-1:]) + list(run.metrics.index[-1:])
            return int(max(steps)) + 1 if steps else 0
        return 0

    def _check_open(self) -> None:
        if self.closed:
            raise UsageError(f"the recorder for {self.path} is closed")


# The recorders of this process that are attached: by run file, and by watched module.
_LIVE_PATHS: weakref.WeakValueDictionary[str, Recorder] = weakref.WeakValueDictionary()
_WATCHED: weakref.WeakKeyDictionary[nn.Module, tuple[Recorder, str]] = weakref.WeakKeyDictionary()


def _check_not_being_recorded(path: str) -> None:
    """Refuse a run file that another attached recorder of this process is writing."""
    other = _LIVE_PATHS.get(os.path.realpath(path))
    if other is not None and not other.closed:
        raise UsageError(
            f"{path}: another recorder in this process is writing this file; close it first "
            "(rec.close()) or choose another path"
        )


def _check_not_watched(modules) -> None:
    """Refuse modules that an attached recorder already watches (each would record twice)."""
    for _, module in modules:
        other, name = _WATCHED.get(module, (None, None))
        if other is not None and not other.closed:
            raise UsageError(
                f"module {name!r} is already watched by the recorder writing {other.path}; "
                "close that recorder first (rec.close()), or watch other layers"
            )


def _without_noise_scale(chosen: tuple[str, ...], by_default: bool) -> tuple[str, ...]:
    """The statistics under FSDP1, which cannot record the gradient noise scale: its forward
    computes with views of flat parameters made anew at every call, so no hook sees a layer's
    gradient of one rank's batch before the reduction. Asked for, an error; by default, left
    out with a warning."""
    wanted = [s for s in chosen if s in S.GNS_STATS]
    if not wanted:
        return chosen
    reason = (
        "the gradient noise scale (gns_*) is not recorded under FSDP1 (FullyShardedDataParallel):"
        " its layers compute with views of flat parameters, so no hook sees a layer's gradient "
        "of one rank's batch before the reduction; use FSDP2 (fully_shard) or DDP"
    )
    if not by_default:
        raise UsageError(f"{reason}, or leave {', '.join(wanted)} out of stats")
    warnings.warn(f"gradscope: {reason}", RuntimeWarning, stacklevel=4)
    return tuple(s for s in chosen if s not in S.GNS_STATS)


def _no_calls(device) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty per-call sums and layers: a rank that saw no call still joins a record."""
    return (
        torch.zeros(0, dtype=torch.float64, device=device),
        torch.zeros(0, dtype=torch.long, device=device),
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else buffer); CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _describe_layers(layers) -> object:
    if layers is None:
        return None
    items = layers if isinstance(layers, (list, tuple)) else [layers]
    return [_describe_layer_item(item) for item in items]


def _describe_layer_item(item) -> str:
    """A `layers` item in the file's attach_args: a glob as is, a type or a module by class."""
    if isinstance(item, str):
        return item
    if isinstance(item, nn.Module):
        return f"a {type(item).__name__} module"
    return getattr(item, "__name__", repr(item))
