"""Gradient noise scale sums (McCandlish et al. 2018, appendix A.1): per layer, each small
batch's squared gradient norm, read in the backward pass, and the large batch's, read once the
backward pass and any data-parallel reduction are done."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from gradscope.recorder._kernels import KernelChoice, unit_norms_into
from gradscope.recorder._stats import host_to_device
from gradscope.recorder._wrappers import local_part

# Raw per-layer sums of one record ([L] float64). The small batches' are added across ranks;
# the large batch's are of the reduced gradient, so they combine as the parameter sums do
# (a whole layer's from rank 0, a sharded layer's added over its shards).
SMALL_SUMS = ("gns_small_sumsq", "gns_batches", "gns_rows", "gns_inv_rows")
LARGE_SUMS = ("gns_large_sumsq", "gns_large_count")


class NoiseScaleSums:
    """This step's raw sums for the gradient noise scale of every watched layer.

    A small batch is the backward pass (or passes) between two forward passes on one rank: a
    tensor hook on each parameter sees the gradient that pass adds (before it is accumulated
    into `.grad`, and under DDP or FSDP2 before the ranks' reduction), so gradient accumulation
    and data parallelism both give several small batches per step; a forward pass begun
    outside a backward closes the one before it, the record the last. The large batch is all
    of them: the gradient the step applies, read from `.grad` at the end of each backward
    pass, after DDP's all-reduce or FSDP2's reduce-scatter has written it (the last pass of
    the step counts), and before any unscaling or clipping, so both norms are of the same
    backpropagated loss.

    A small batch's rows are, for each forward pass it backpropagates, the first dimension of
    the output gradient of the earliest watched module of that pass the backward reaches
    (normally the first layer: the batch, as for `batch_sample`). Its gradient counts
    `rows / B` of the large batch's (B: all rows of the step, on all ranks): the loss of a
    step is taken as the mean over its examples, as with micro-batch losses divided by their
    number, or DDP's average of per-rank means.

    A parameter shared by several watched modules (tied weights) counts in the first of them
    (in the model's order): the layers' sums add up to the model's.

    Under FSDP2 the parameters a module computes with are the unsharded ones that
    `fully_shard` puts in place before its forward: the tensor hooks go on those, from a
    forward pre-hook on each sharded module (which runs after FSDP2's own). Hooks exist on
    recorded steps only (`arm` and `disarm`).
    """

    def __init__(
        self,
        modules: list[tuple[str, nn.Module]],
        sharded: list[bool],
        kernels: KernelChoice,
        device: torch.device,
        world: int,
        reads_large_batch: bool = True,
    ):
        self._device = device
        self._n_layers = len(modules)
        self._weight = 1.0 / world  # DDP and FSDP2 average the ranks' gradients
        self._reads_large_batch = reads_large_batch  # under DDP only rank 0 needs it
        self._squares = kernels.numba_for(device)  # slots hold x.x (CPU dot), else norms
        slot_of_param: dict[int, int] = {}
        self._slot_of: dict[tuple[int, str], int] = {}  # (module position, name) -> slot
        self._params: list[nn.Parameter] = []  # by slot, as attached (FSDP2: sharded)
        layer_of = []
        for position, (_, module) in enumerate(modules):
            for name, p in module.named_parameters(recurse=False):
                slot = slot_of_param.get(id(p))
                if slot is None:
                    slot = slot_of_param[id(p)] = len(self._params)
                    self._params.append(p)
                    layer_of.append(position)
                self._slot_of[position, name] = slot
        self._layer_of = np.array(layer_of, dtype=np.int64)
        self._layer_of_slot = host_to_device(self._layer_of, torch.long, device)
        self._numels = np.array([local_part(p).numel() for p in self._params], dtype=np.int64)
        self._whole_slots = [s for s in range(len(self._params)) if not sharded[layer_of[s]]]
        self._sharded_modules = [
            (position, module) for position, (_, module) in enumerate(modules) if sharded[position]
        ]
        self._norms = torch.zeros(len(self._params), device=device)
        # One process, whole parameters: a parameter whose `.grad` is None when its hook runs
        # gets exactly this pass's gradient, which the large batch's read at the end of the
        # pass measures anyway, so its hook defers the norm to that read (after
        # zero_grad(set_to_none=True), every parameter of a step's first pass: no device op
        # per parameter in a step of one backward pass). Under DDP `.grad` is the reduced one.
        self._defers = world == 1 and reads_large_batch and not any(sharded)
        self._deferred = np.zeros(len(self._params), dtype=bool)  # in the open small batch
        self._large_norms: tuple[tuple[int, ...], torch.Tensor] | None = None  # latest read
        self._slot_index: dict[tuple[int, ...], torch.Tensor] = {}
        self._slots = list(self._norms.unbind())  # 0-d views, made once
        self._fired = np.zeros(len(self._params), dtype=bool)  # in the open small batch
        self._hooks = [self._param_hook(slot) for slot in range(len(self._params))]
        self._present: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []
        self._hooked: set[int] = set()  # ids of the unsharded parameters hooked (FSDP2)
        self.armed = False
        self._forward = 0  # forward passes begun on recorded steps
        self._call = 0  # watched-module calls in the current forward pass
        self._warned: set[str] = set()
        self.clear()

    # ----- hooks on recorded steps ------------------------------------------------------------

    def arm(self) -> None:
        """Put the hooks on for a recorded step."""
        if self.armed:
            return
        self.armed = True
        for slot in self._whole_slots:
            p = self._params[slot]
            if p.requires_grad:
                self._handles.append(p.register_hook(self._hooks[slot]))
        for position, module in self._sharded_modules:
            self._handles.append(module.register_forward_pre_hook(self._unsharded_hook(position)))

    def disarm(self) -> None:
        """Take every hook off (between records, and when the recorder closes)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hooked.clear()
        self.armed = False

    def void(self) -> None:
        """This step's passes do not count (a non-finite value tripped the flight recorder,
        which replays them): its record has no noise scale."""
        self.disarm()
        self._void = True

    def forward_began(self) -> None:
        """The first watched module of a forward pass ran (in any grad mode: reentrant
        checkpointing runs it under no_grad). Begun outside a backward pass, it closes the
        small batch before it; inside, it is a recomputation (activation checkpointing)."""
        if torch._C._current_graph_task_id() == -1:
            self._close_small_batch()
            self._forward += 1
            self._call = 0

    def output(self, tensors: list[torch.Tensor]) -> None:
        """A watched module's floating outputs on a recorded step, in a forward pass with grad
        enabled: the first that needs a gradient will tell its rows."""
        if self._void:
            return
        for t in tensors:
            if t.requires_grad:
                t.register_hook(self._rows_hook(self._forward, self._call))
                break
        self._call += 1

    def _rows_hook(self, forward: int, call: int):
        """The output-gradient hook of watched call `call` of forward pass `forward`."""

        def hook(grad):
            self.reached(grad, call, forward)

        return hook

    def reached(self, grad: torch.Tensor, call: int, forward: int | None = None) -> None:
        """The backward reached the output of the `call`-th watched call of a forward pass (of
        the latest one by default: a compiled graph's op does not know which): the earliest
        call of a pass that the backward reaches gives the pass's rows."""
        self._backward_ran()
        forward = self._forward if forward is None else forward
        seen = self._reached.get(forward)
        if seen is None or call < seen[0]:
            self._reached[forward] = (call, grad.shape[0] if grad.dim() else 1)

    def _param_hook(self, slot: int):
        out = self._slots[slot]
        param = self._params[slot]

        def hook(grad):
            self._backward_ran()
            if self._fired[slot]:  # a second gradient before the next forward pass
                self._parts_unknown = True
            self._fired[slot] = True
            if self._defers and param.grad is None:
                self._deferred[slot] = True  # `.grad` will be `grad`: read at the pass's end
            else:
                _square_into(grad, out, self._squares)

        return hook

    def _unsharded_hook(self, position: int):
        """A forward pre-hook that hooks the parameters the module computes with (FSDP2's
        unsharded ones: the same tensors from call to call, hooked once)."""

        def pre_hook(module, args):
            if not torch.is_grad_enabled():
                return
            for name, p in module.named_parameters(recurse=False):
                if p.requires_grad and id(p) not in self._hooked:
                    self._hooked.add(id(p))
                    hook = self._hooks[self._slot_of[position, name]]
                    self._handles.append(p.register_hook(hook))

        return pre_hook

    def _backward_ran(self) -> None:
        """A hook of a backward pass ran: a small batch is open, and the large batch is read
        when this graph task ends (under reentrant checkpointing, each nested one too: the
        outermost, whose end comes last, is read last)."""
        if self._void:
            return
        self._open = True
        task = torch._C._current_graph_task_id()
        if task not in self._tasks:
            self._tasks.add(task)
            torch.autograd.Variable._execution_engine.queue_callback(
                lambda: self._end_of_task(task)
            )

    def _end_of_task(self, task: int) -> None:
        """A graph task of the backward pass is done. DDP queued its own end-of-backward work
        (waiting for the all-reduce, writing `.grad`) during the pass, after this callback: the
        large batch is read in one queued behind it."""
        self._tasks.discard(task)
        if self._reads_large_batch:
            torch.autograd.Variable._execution_engine.queue_callback(self._read_large_batch)

    def _close_small_batch(self) -> None:
        """Add the small batch of the backward passes since the last forward pass began."""
        if not self._open:
            return
        self._open = False
        rows = sum(rows for _, rows in self._reached.values())
        self._reached.clear()
        read = self._large_norms
        if (
            read is not None
            and self._deferred.any()
            and not (self._fired & ~self._deferred).any()
            and read[0] == tuple(np.flatnonzero(self._deferred).tolist())
        ):
            # every gradient of the pass was deferred, and the read holds exactly them: the
            # large batch's per-layer squares are this small batch's
            per_layer = self._large
            self._deferred[:] = False
        else:
            if self._deferred.any():
                self._fill_deferred()
            per_layer = None
        self._fired[:] = False
        if rows == 0:  # the passes reached no watched output: the batch's size is unknown
            self._rows_known = False
        elif per_layer is not None:
            self._small.add_(per_layer, alpha=self._weight**2 / rows**2)
        else:
            squares = self._norms.double()
            if not self._squares:
                squares = squares.square()
            self._small.index_add_(0, self._layer_of_slot, squares, alpha=self._weight**2 / rows**2)
        if per_layer is None:
            self._norms.zero_()
        if rows:
            self._batches += 1
            self._inv_rows += 1.0 / rows
            self._total_rows += rows

    def _read_large_batch(self) -> None:
        """Per layer, the sum of squares of `.grad` now (this rank's shard under FSDP2)."""
        present = tuple(
            slot
            for slot, p in enumerate(self._params)
            if p.grad is not None and self._numels[slot] > 0
        )
        if not present:
            self._large = torch.zeros(self._n_layers, dtype=torch.float64, device=self._device)
            self._large_count = self._large
            return
        layers, counts = self._present_layout(present)
        grads = [local_part(self._params[slot].grad) for slot in present]
        norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
        self._large_norms = (present, norms)
        squares = norms.to(self._device, torch.float64).square_()
        self._large = torch.zeros(self._n_layers, dtype=torch.float64, device=self._device)
        self._large.index_add_(0, layers, squares)
        self._large_count = counts  # cached: never written to

    def _fill_deferred(self) -> None:
        """The deferred parameters' norms of the open small batch, from the large batch's read
        at the end of its backward pass (their `.grad` was this pass's gradient alone)."""
        slots = tuple(np.flatnonzero(self._deferred).tolist())
        self._deferred[:] = False
        if self._large_norms is None:  # no read since their hooks ran: a norm is unknown
            self._parts_unknown = True
            return
        present, norms = self._large_norms
        where = {slot: i for i, slot in enumerate(present)}
        if any(slot not in where for slot in slots):
            self._parts_unknown = True
            return
        key = (present, slots)
        index = self._slot_index.get(key)
        if index is None:
            if len(self._slot_index) > 16:
                self._slot_index.clear()
            rows = [where[slot] for slot in slots]
            index = self._slot_index[key] = host_to_device(
                np.array([slots, rows], dtype=np.int64), torch.long, self._device
            )
        values = norms.to(self._device)[index[1]]
        self._norms[index[0]] = values.square() if self._squares else values

    def _present_layout(self, present: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer of each parameter in `present`, and each layer's element count among
        them [L], on the device (cached: the same parameters have gradients step after step)."""
        cached = self._present.get(present)
        if cached is None:
            if len(self._present) > 16:
                self._present.clear()
            index = np.array(present, dtype=np.int64)
            layers = self._layer_of[index]
            counts = np.bincount(layers, weights=self._numels[index], minlength=self._n_layers)
            cached = self._present[present] = (
                host_to_device(layers, torch.long, self._device),
                host_to_device(counts, torch.float64, self._device),
            )
        return cached

    # ----- the record -------------------------------------------------------------------------

    def layer_sums(self) -> dict[str, torch.Tensor]:
        """This rank's raw sums [L] (float64) of the step: SMALL_SUMS and LARGE_SUMS."""

        def per_layer(value: float) -> torch.Tensor:
            return torch.full((self._n_layers,), value, dtype=torch.float64, device=self._device)

        self._close_small_batch()
        if self._void:
            nan = per_layer(float("nan"))
            return {name: nan for name in SMALL_SUMS + LARGE_SUMS}
        if not self._rows_known:
            self._warn(
                "a backward pass of a recorded step reached the output of no watched module, "
                "so the size of its batch is unknown: that step has no gradient noise scale "
                "(watch a module the loss depends on, e.g. the first layer)"
            )
        if self._parts_unknown:
            self._warn(
                "a parameter received two gradients between forward passes (two backward "
                "passes of one forward, or forwards run before their backwards): the small "
                "batch they make up has an unknown norm, so that step records no small batches"
            )

        # not copies: clear() puts new tensors in their place before the next step writes
        return {
            "gns_small_sumsq": self._small,
            "gns_rows": per_layer(self._total_rows if self._rows_known else float("nan")),
            "gns_batches": per_layer(float("nan") if self._parts_unknown else self._batches),
            "gns_inv_rows": per_layer(self._inv_rows),
            "gns_large_sumsq": self._large,
            "gns_large_count": self._large_count,
        }

    def _warn(self, what: str) -> None:
        """Say `what` once per recorder."""
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"gradscope: {what}", RuntimeWarning, stacklevel=4)

    def clear(self) -> None:
        """Forget this step's small and large batches (a record was taken, or the gradients
        are being zeroed)."""
        zeros = torch.zeros(2, self._n_layers, dtype=torch.float64, device=self._device)
        self._small, self._large = zeros.unbind()  # `_large` is replaced, not written to
        self._large_count = self._large
        self._batches = 0
        self._inv_rows = 0.0
        self._total_rows = 0
        self._rows_known = True
        self._reached: dict[int, tuple[int, int]] = {}  # forward pass -> (call, rows)
        self._tasks: set[int] = set()  # graph tasks whose end is awaited
        self._open = False  # a backward pass ran since the last small batch was added
        self._parts_unknown = False
        self._void = False
        self._norms.zero_()
        self._fired[:] = False
        self._deferred[:] = False
        self._large_norms = None


def _square_into(grad: torch.Tensor, out: torch.Tensor, squares: bool) -> None:
    """out = grad . grad (`squares`: a CPU dot, on every thread) or ||grad|| (the device path,
    squared once per backward pass), in float32."""
    if grad.requires_grad:  # only under create_graph
        grad = grad.detach()
    if grad.device != out.device:
        out.copy_(torch.linalg.vector_norm(grad, 2, dtype=torch.float32) ** (2 if squares else 1))
        return
    if squares:
        g = grad.view(-1) if grad.is_contiguous() else grad.reshape(-1)
        if g.dtype is not torch.float32:
            g = g.float()
        torch.dot(g, g, out=out)
    else:
        unit_norms_into(grad, (), out)


def noise_scale_stats(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gns_small_sq, gns_large_sq, gns_small_batch and gns_large_batch [L] from the raw sums
    (this rank's, or added across ranks).

    Small batch j of b_j rows adds c_j to the large batch's gradient G_B (B rows), so its own
    mean gradient is G_j = (B / b_j) c_j. gns_small_sq is the mean over the step's small
    batches of |G_j|^2, gns_small_batch their harmonic mean size (so that the mean's expected
    value is |G|^2 + tr(Sigma) / b, as for equal sizes); gns_large_sq is |G_B|^2 and
    gns_large_batch B. The small ones are NaN with fewer than two small batches, all four for
    a layer without a gradient.
    """
    batches, rows = sums["gns_batches"], sums["gns_rows"]
    nan = torch.full_like(rows, float("nan"))
    has_grad = sums["gns_large_count"] > 0
    small = has_grad & (batches >= 2)
    return {
        "gns_small_sq": torch.where(small, rows * rows * sums["gns_small_sumsq"] / batches, nan),
        "gns_small_batch": torch.where(small, batches / sums["gns_inv_rows"], nan),
        "gns_large_sq": torch.where(has_grad, sums["gns_large_sumsq"], nan),
        "gns_large_batch": torch.where(has_grad & (rows > 0), rows, nan),
    }
