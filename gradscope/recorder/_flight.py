"""The flight recorder: detect on every step, and when the flag trips, replay the step to find
where its first non-finite value came from."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from gradscope._origin import NonFiniteOrigin
from gradscope.errors import UsageError
from gradscope.recorder._culprit_op import culprit_op
from gradscope.recorder._nonfinite_check import NonFiniteCheck
from gradscope.recorder._replay import ReplayChecks, first_finding, preserved
from gradscope.recorder._step_capture import StepCapture, eager_wrappers, entry_candidates
from gradscope.recorder._wrappers import local_part, user_type_name

NONFINITE_MODES = ("watch", "raise", "skip", "off")
UPDATE_OF_MODE = {"watch": "applied", "skip": "skipped", "raise": "raised"}
# Why a step is not replayed (NonFiniteOrigin.reason of phase "not_replayed").
NO_CAPTURE = (
    "no forward call of the model was seen in this step, and the replay re-runs those calls"
)
COMPILED_NO_CAPTURE = (
    "no forward call of the model was seen in this step: calls inside a torch.compile'd model "
    "are seen by the hooks of the module torch.compile returned; attach gradscope to that "
    "module (gradscope.attach(torch.compile(model), ...)) to replay a step"
)
AFTER_UPDATE = (
    "it was found after the update (rec.step() comes after it); attach with optimizer=, or "
    "with manual_gradients=True and call rec.read_gradients() before the update, to replay it"
)


def check_mode(nonfinite) -> str:
    """Check attach's `nonfinite` argument."""
    if nonfinite not in NONFINITE_MODES:
        raise UsageError(
            f"nonfinite must be one of {', '.join(repr(m) for m in NONFINITE_MODES)}, "
            f"got {nonfinite!r}"
        )
    return nonfinite


class FlightRecorder:
    """What `attach(..., nonfinite=...)` adds to a recorder (other than "off").

    - `detect()`: every step, one flag for any inf/NaN in a gradient or weight
      (`NonFiniteCheck`); `gradients_nonfinite()` the same for gradients alone.
    - `capture`: references to the step's forward calls, their generator states and the
      gradients that reached their outputs (`StepCapture`).
    - `weight_counts()`, `gradient_counts()`: per watched layer, non-finite elements (on a trip).
    - `replay(...)`: the step run again with checks on every watched module, everything put back
      after, and the origin of its first non-finite value (across ranks: the earliest).
    """

    def __init__(
        self,
        mode: str,
        model: nn.Module,
        root: nn.Module,
        modules: list[tuple[str, nn.Module]],
        params: list[torch.nn.Parameter],
        replay_params: list[torch.nn.Parameter],
        sharded: list[bool],
        device: torch.device,
        rank: int,
        world: int,
    ):
        self.mode = mode
        self._root = root
        self._modules = modules
        self.params = params  # those the update changes: checked at each step
        self._replay_params = replay_params  # every one a replay's backward reaches
        self._device = device
        self._rank, self._world = rank, world
        self._sharded = torch.tensor(sharded, dtype=torch.bool, device=device)
        self._check = NonFiniteCheck(params, reduce_across_ranks=world > 1, device=device)
        # attached to a wrapper (torch.compile's, DDP's), the training code calls the wrapper:
        # its hooks alone capture, eagerly, and a compiled graph holds none of the capture's
        outer = eager_wrappers(model, root)
        candidates = [] if outer else entry_candidates(root, [m for _, m in modules])
        self.capture = StepCapture(candidates, device, outer=outer)

    def detect(self) -> bool:
        """Whether a gradient or a weight holds an inf or NaN now (on any rank)."""
        return self._check.any_nonfinite()

    def gradients_nonfinite(self) -> bool:
        """Whether a gradient holds an inf or NaN now (on any rank)."""
        return self._check.any_nonfinite(weights=False)

    def weight_counts(self) -> dict[str, int]:
        """Watched layer -> its non-finite weight elements, where there are any (all ranks)."""
        return self._layer_counts(lambda p: p)

    def gradient_counts(self) -> dict[str, int]:
        """Watched layer -> its non-finite gradient elements, where there are any (all ranks)."""
        return self._layer_counts(lambda p: p.grad)

    def replay(self, step: int, record_hooks: Callable[[], contextlib.AbstractContextManager]):
        """Replay the step's captured calls with checks on every watched module (inside
        `record_hooks()`, which lets the recorder's own hooks see the calls or not), then name
        the first op of the culprit module. Every rank must call it together."""
        passes = list(self.capture.passes)
        modules = [m for _, m in self._modules]
        culprit = failure = None
        self.capture.paused = True
        try:
            with preserved(self._root, self._replay_params, self._device):
                try:
                    found = self._checked_passes(passes, modules, record_hooks)
                except Exception as e:  # noqa: BLE001 - said in the origin, every rank goes on
                    found, failure = None, f"{type(e).__name__}: {e}"
                found, rank, failure = self._earliest(found, failure)
                if found is not None and found.occurrence is not None and not found.unwatched:
                    culprit, failure = self._culprit(passes, modules, found, rank)
        finally:
            self.capture.paused = False
        if found is None and failure is not None:
            reason = f"replaying it failed ({failure})"
            return NonFiniteOrigin(step, "not_replayed", reason=reason, micro_batches=len(passes))
        if found is None:
            return NonFiniteOrigin(step, "unreproduced", micro_batches=len(passes))
        name = self._name(found.position)
        return NonFiniteOrigin(
            step,
            found.phase,
            layer=name,
            layer_type=self._type(found.position),
            neighbour=self._name(found.neighbour),
            unwatched=found.unwatched,
            culprit=culprit,
            rank=rank if self._world > 1 else None,
            micro_batch=found.micro_batch + 1,
            micro_batches=len(passes),
            reason=failure and f"running the module alone failed ({failure})",
        )

    def no_capture(self) -> bool:
        """No forward call was captured in this step (nothing to replay)."""
        return not self.capture.passes

    def close(self) -> None:
        """Take the capture's hooks off."""
        self.capture.remove()

    def _checked_passes(self, passes, modules, record_hooks):
        """Every captured call replayed with the checks on: the first finding, or None."""
        checks = ReplayChecks(modules)
        try:
            with record_hooks():
                return first_finding([checks.run(p) for p in passes])
        finally:
            checks.remove()

    def _culprit(self, passes, modules, found, rank: int):
        """(the op that made the value on `rank`, why it could not be run) for a finding that
        names a module call; every rank runs that call (symmetric collectives)."""
        culprit = failure = None
        try:
            culprit = culprit_op(
                passes[found.micro_batch],
                modules[found.position],
                found.occurrence,
                backward=found.phase != "forward",
            )
        except Exception as e:  # noqa: BLE001 - said in the origin
            failure = f"{type(e).__name__}: {e}"
        if self._world == 1:
            return culprit, failure
        gathered = [None] * self._world
        torch.distributed.all_gather_object(gathered, (culprit, failure))
        return gathered[rank]

    def _earliest(self, found, failure):
        """(finding, rank, failure): this rank's, or under torch.distributed the earliest of
        every rank's, and the first rank's failure to replay, if one failed."""
        if self._world == 1:
            return found, self._rank, failure
        gathered = [None] * self._world
        torch.distributed.all_gather_object(gathered, (found, failure))
        failures = [f"rank {r}: {fail}" for r, (_, fail) in enumerate(gathered) if fail]
        if failures:
            return None, self._rank, failures[0]
        ranked = [(f.key(r), f, r) for r, (f, _) in enumerate(gathered) if f is not None]
        if not ranked:
            return None, self._rank, None
        _, found, rank = min(ranked, key=lambda item: item[0])
        return found, rank, None

    def _layer_counts(self, tensor_of) -> dict[str, int]:
        counts = torch.zeros(len(self._modules), dtype=torch.float64, device=self._device)
        with torch.no_grad():
            for position, (_, module) in enumerate(self._modules):
                for p in module.parameters(recurse=False):
                    t = tensor_of(p)
                    if t is not None:
                        counts[position] += (~torch.isfinite(local_part(t))).sum()
        if self._world > 1:  # sharded layers add their shards, replicated ones agree
            added = torch.where(self._sharded, counts, 0.0)
            most = torch.where(self._sharded, 0.0, counts)
            torch.distributed.all_reduce(added)
            torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
            counts = added + most
        return {self._modules[i][0]: int(n) for i, n in enumerate(counts.tolist()) if n > 0}

    def _name(self, position: int | None) -> str | None:
        return None if position is None else self._modules[position][0]

    def _type(self, position: int | None) -> str | None:
        return None if position is None else user_type_name(self._modules[position][1])


def event_of(origin: NonFiniteOrigin) -> dict:
    """The run file's event row (`RunWriter.event`) for an origin."""
    culprit = origin.culprit
    largest = culprit.largest_input() if culprit is not None else None
    return {
        "step": origin.step,
        "kind": "nonfinite",
        "phase": origin.phase,
        "layer": origin.layer,
        "rank": origin.rank,
        "micro_batch": origin.micro_batch,
        "micro_batches": origin.micro_batches,
        "update": origin.update,
        "recorded": origin.recorded,
        "op": origin.op,
        "op_dtype": largest[0] if largest else None,
        "op_shape": str(list(largest[1])) if largest else None,
        "op_absmax": largest[2] if largest else None,
        "message": origin.sentence(),
    }
