"""The Recorder's part that acts on the flight recorder: trips, their origins, skipped updates."""

from __future__ import annotations

import contextlib
import warnings

from torch import nn

from gradscope._origin import NonFiniteOrigin
from gradscope.errors import NonFiniteError, UsageError
from gradscope.recorder import _param_stats as P
from gradscope.recorder._compiled_code import frames_compiled_by_others
from gradscope.recorder._flight import (
    COMPILED_NO_CAPTURE,
    NO_CAPTURE,
    UPDATE_OF_MODE,
    FlightRecorder,
    check_mode,
    event_of,
)
from gradscope.recorder._wrappers import replay_root, user_type_name


class NonFiniteTrips:
    """What a Recorder does with `attach(..., nonfinite=...)`, as a mixin of `Recorder`.

    It uses the recorder's step state (`_step`, `_due`, the accumulators, the writers, the
    forward hooks, `_finish_step`) and adds: the flight recorder (`_flight`, None when "off"),
    acting on a trip (`_trip`: replay, trip record, origin stored, then watch, skip or raise),
    the gradients a skipped update did not see (`_give_back_skipped_gradients`), and the count
    of updates a GradScaler skipped (`_count_skipped_update`, at zero_grad).
    """

    @staticmethod
    def _check_nonfinite_mode(nonfinite, optimizer, manual_gradients) -> None:
        check_mode(nonfinite)
        if nonfinite == "skip" and optimizer is None:
            raise UsageError(
                'nonfinite="skip" needs optimizer=: gradscope skips the update inside '
                'optimizer.step(); without one, use "watch" or "raise"'
            )

    def _flight_recorder(self, model: nn.Module, nonfinite: str) -> FlightRecorder | None:
        """The flight recorder of `attach(..., nonfinite=...)`, None when it is "off"."""
        self._pending_trip = False  # read_gradients found a non-finite value, not acted on yet
        self._stepped_since_zero_grad = True  # an update ran since zero_grad was last called
        self._weights_reported = False  # the last trip found non-finite weights, reported
        self._applied_trip: int | None = None  # the last tripped step whose update ran
        self._stashed_grads: list | None = None  # nonfinite="skip": the update's gradients
        if nonfinite == "off":
            return None
        root = replay_root(model)
        if self._optimizer is not None:
            params = [p for group in self._optimizer.param_groups for p in group["params"]]
        else:
            params = list(root.parameters())
        return FlightRecorder(
            nonfinite,
            model,
            root,
            self._modules,
            params,
            list(root.parameters()) + params,
            self._sharded,
            self._device,
            self.rank,
            self.world,
        )

    def _tripped_at_update(self) -> bool:
        """Whether the update about to run meets a non-finite value: checked now, or (manual
        gradients) when read_gradients() read the gradients."""
        if self._manual_gradients:
            tripped, self._pending_trip = self._pending_trip, False
            return tripped
        return self._flight.detect()

    def _trip(self) -> None:
        """A non-finite value is about to reach an update: find where it came from (replay),
        record the step in full, store the origin, then let the update run, skip it or raise."""
        flight = self._flight
        self._stepped_since_zero_grad = True
        self._pending_trip = False
        weights = flight.weight_counts()
        report = True
        if weights:  # nothing to replay: the weights held it before the step
            layer = next(name for name in self.layer_names if name in weights)
            origin = NonFiniteOrigin(self._step, "weight", layer=layer, counts=weights)
            origin.layer_type = self._type_of(layer)
            if self._applied_trip is not None:
                origin.reason = (
                    f"the update of step {self._applied_trip} ran with a non-finite gradient"
                )
            report = not self._weights_reported  # once, not at every later step
            self._weights_reported = True
            if self._due:
                self._read_parameters()
        elif flight.no_capture():
            compiled = frames_compiled_by_others() > 0
            origin = self._not_replayed(COMPILED_NO_CAPTURE if compiled else NO_CAPTURE)
            if self._due:
                self._read_parameters()
        else:
            self._weights_reported = False
            counts = flight.gradient_counts()
            newly_due = not self._due
            if newly_due:  # the trip record: every statistic of this step, from the replay
                self._due = True
                self._reset_accumulators()
                self._forward_hooks.everywhere()
            self._read_parameters()
            self._muted = True
            try:
                origin = flight.replay(self._step, lambda: self._hooks_see_replay(newly_due))
            finally:
                self._muted = False
            origin.counts = counts if origin.phase in ("unreproduced", "not_replayed") else {}
            origin.recorded = newly_due
            if origin.phase == "not_replayed" and newly_due:
                self._reset_accumulators()  # a replay that failed half-way: no activations
        origin.update = UPDATE_OF_MODE[flight.mode]
        if origin.update == "applied" and origin.phase != "weight":
            self._applied_trip = self._step
        if report:
            self._report(origin)
        if flight.mode == "skip":
            self._stashed_grads = [(p, p.grad) for p in flight.params]
            for p in flight.params:
                p.grad = None  # torch's optimizers leave a parameter without gradient alone
        elif flight.mode == "raise":
            self._in_update = False
            self._finish_step()  # the step keeps its number and its record
            raise NonFiniteError(origin)

    def _not_replayed(self, reason: str) -> NonFiniteOrigin:
        """The origin of a trip that cannot be replayed, with the per-layer counts."""
        counts = self._flight.gradient_counts()
        return NonFiniteOrigin(self._step, "not_replayed", counts=counts, reason=reason)

    @contextlib.contextmanager
    def _hooks_see_replay(self, see: bool):
        """While the replay runs its passes: the recorder's hooks record them (`see`, a step
        that was not due) or not (a due step, recorded from its original passes)."""
        self._muted = not see
        try:
            yield
        finally:
            self._muted = True

    def _read_parameters(self) -> None:
        """The record's gradient sums and weight snapshot, where not read yet this step."""
        groups = self._param_groups()
        if self._want_grad and self._grad_sums is None:
            self._grad_sums = P.gradient_sums(groups, self._device)
        if self._want_weight and self._before is None:
            self._before = P.weight_snapshot(groups, self._device)

    def _report(self, origin: NonFiniteOrigin) -> None:
        """Store the origin in the run file(s) and, unless it will be raised, warn about it."""
        for writer in self._ensure_writer():
            if writer is not None:
                writer.event(event_of(origin))
        if self._flight.mode != "raise" and self.rank == 0:
            warnings.warn(f"gradscope: {origin.sentence()}", RuntimeWarning, stacklevel=4)

    def _count_skipped_update(self) -> None:
        """zero_grad() after gradients holding a non-finite value met no update: a GradScaler
        skipped it for an overflow (expected under AMP), counted. With manual gradients,
        read_gradients() saw the value and no optimizer.step() came; otherwise no update ran
        since the last zero_grad() and the gradients it wipes hold the value."""
        if self._flight is not None:
            if self._manual_gradients:
                overflow = self._pending_trip
            else:
                overflow = not self._stepped_since_zero_grad and self._flight.gradients_nonfinite()
            if overflow:
                event = {"step": self._step, "kind": "amp_overflow", "update": "skipped"}
                for writer in self._ensure_writer():
                    if writer is not None:
                        writer.event(event)
        self._stepped_since_zero_grad = False
        self._pending_trip = False

    def _type_of(self, name: str) -> str:
        return next(user_type_name(m) for n, m in self._modules if n == name)

    def _give_back_skipped_gradients(self) -> None:
        """After an update nonfinite="skip" skipped: the parameters get their gradients back."""
        if self._stashed_grads is not None:
            for p, grad in self._stashed_grads:
                p.grad = grad
            self._stashed_grads = None
