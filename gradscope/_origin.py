"""Where a step's first non-finite value came from (the flight recorder's answer), in words."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Where the replay can place the first non-finite value, in the order a step makes its values.
REPLAY_PHASES = ("input", "forward", "loss", "backward", "parameter_gradient")
# The phases of an origin: the replay's, then what is said when the replay cannot place it.
PHASES = (*REPLAY_PHASES, "unreproduced", "weight", "not_replayed")
UPDATES = ("applied", "skipped", "raised")  # what became of the update of a tripped step
COUNTS_SHOWN = 5  # layers listed by name in a sentence about per-layer counts
PYTHON_NUMBER = "python float"  # the dtype said for a Python number among an op's arguments


@dataclass
class OpCulprit:
    """The first ATen op that produced a non-finite value when the culprit module ran alone."""

    name: str  # "aten.native_batch_norm"
    inputs: list[tuple[str, tuple[int, ...], float]]  # (dtype, shape, largest |x|) per tensor

    def largest_input(self) -> tuple[str, tuple[int, ...], float] | None:
        """The input to name: a non-finite one if any, else the tensor (or, with none, the
        Python number) with the largest magnitude; None for an op without inputs."""
        bad = [item for item in self.inputs if not math.isfinite(item[2])]
        tensors = [item for item in self.inputs if item[0] != PYTHON_NUMBER]
        chosen = bad or tensors or self.inputs
        return max(chosen, key=lambda item: item[2]) if chosen else None


@dataclass
class NonFiniteOrigin:
    """Where the first inf/NaN of optimizer step `step` appeared, and what became of the update.

    `phase` is one of PHASES: "input" (the batch), "forward" (the first watched module whose
    inputs are finite and whose output is not), "loss" (the forward is finite, the gradient
    reaching the model's outputs is not), "backward" (the module whose backward turned a finite
    output gradient into a non-finite one for what came before it), "parameter_gradient"
    (activations and their gradients finite, a parameter gradient not), "unreproduced" (the
    replay came out finite), "weight" (a weight was non-finite before the step: nothing to
    replay) or "not_replayed" (found after the update, too late to replay).
    """

    step: int
    phase: str
    layer: str | None = None  # the watched module named (qualified name)
    layer_type: str | None = None
    neighbour: str | None = None  # the watched module next to it that the sentence names
    unwatched: bool = False  # an unwatched operation, not `layer` itself, may have made it
    culprit: OpCulprit | None = None
    rank: int | None = None  # under torch.distributed: the rank where it appeared
    micro_batch: int | None = None  # 1-based forward pass of the step (accumulation)
    micro_batches: int = 1
    counts: dict[str, int] = field(default_factory=dict)  # layer -> non-finite elements
    update: str = "applied"  # one of UPDATES
    recorded: bool = False  # a full record of the step was written because of it
    # "not_replayed": why; "weight": what put the value there; otherwise why no op is named
    reason: str | None = None

    @property
    def op(self) -> str | None:
        """The ATen op named as the producer, if the module run alone found it."""
        return self.culprit.name if self.culprit is not None else None

    def sentence(self) -> str:
        """One sentence: step, where, the op and its largest input, as `inspect` prints it."""
        where = f"step {self.step}" + (f" on rank {self.rank}" if self.rank is not None else "")
        pass_ = ""
        if self.micro_batches > 1 and self.micro_batch is not None:
            pass_ = f" (micro-batch {self.micro_batch} of {self.micro_batches})"
        return f"{where}: {_PHRASES[self.phase](self, pass_)}"


def _module(origin: NonFiniteOrigin) -> str:
    return f"{origin.layer} ({origin.layer_type})" if origin.layer_type else str(origin.layer)


def _op_text(origin: NonFiniteOrigin) -> str:
    culprit = origin.culprit
    if culprit is None and origin.reason:
        return f"; {origin.reason}, so no op is named"
    if culprit is None:
        return "; run alone, the module came out finite, so no op is named"
    largest = culprit.largest_input()
    if largest is None:
        return f", {culprit.name}"
    dtype, _, absmax = largest
    if math.isfinite(absmax):
        return f", {culprit.name}, input absmax {number(absmax)} ({dtype})"
    return f", {culprit.name}, an input already held {number(absmax)} ({dtype})"


def _input(origin: NonFiniteOrigin, pass_: str) -> str:
    return f"the input batch{pass_} holds a non-finite value"


def _forward(origin: NonFiniteOrigin, pass_: str) -> str:
    if origin.layer is None:
        return (
            f"first non-finite value in the forward pass{pass_}, made by an unwatched operation "
            f"after the last watched module ({origin.neighbour})"
        )
    if origin.unwatched:
        after = f" after {origin.neighbour}" if origin.neighbour else ""
        return (
            f"first non-finite value in the forward pass{pass_}, already in the input of "
            f"{_module(origin)}: made by an unwatched operation{after}"
        )
    return (
        f"first non-finite value in the forward pass{pass_} of {_module(origin)}{_op_text(origin)}"
    )


def _loss(origin: NonFiniteOrigin, pass_: str) -> str:
    return (
        f"the forward pass{pass_} is finite, the gradient reaching the model's outputs is not: "
        "the loss, or code after the model, made it"
    )


def _backward(origin: NonFiniteOrigin, pass_: str) -> str:
    if origin.layer is None:
        return (
            f"first non-finite value in the backward pass{pass_}, made between the model's "
            f"outputs and the last watched module ({origin.neighbour}) by an unwatched operation"
        )
    if origin.culprit is None and origin.neighbour and not origin.reason:
        return (
            f"first non-finite value in the backward pass{pass_} between {origin.neighbour} and "
            f"{_module(origin)}: run alone, {origin.layer} came out finite, so an unwatched "
            "operation between them made it"
        )
    text = f"first non-finite value in the backward pass{pass_} of {_module(origin)}"
    text += _op_text(origin)
    if origin.neighbour:
        text += (
            f"; an unwatched operation between {origin.neighbour} and {origin.layer} may be "
            "the cause"
        )
    return text


def _parameter_gradient(origin: NonFiniteOrigin, pass_: str) -> str:
    return (
        f"activations and their gradients are finite{pass_}, the parameter gradient of "
        f"{_module(origin)} is not{_op_text(origin)}"
    )


def _unreproduced(origin: NonFiniteOrigin, pass_: str) -> str:
    return (
        "detection saw a non-finite gradient but the replay came out finite (non-deterministic "
        "kernels, data changed in place after the forward, or gradients changed after the "
        "backward)" + _counts(origin, "; non-finite gradient elements at detection")
    )


def _weight(origin: NonFiniteOrigin, pass_: str) -> str:
    cause = origin.reason or "an earlier update, or code outside the training step, put it there"
    return (
        f"the weights of {_module(origin)} were already non-finite before the step ({cause}), "
        "so it was not replayed" + _counts(origin, "; non-finite weight elements")
    )


def _not_replayed(origin: NonFiniteOrigin, pass_: str) -> str:
    return f"a non-finite value was found but the step was not replayed: {origin.reason}" + _counts(
        origin, "; non-finite gradient elements"
    )


def _counts(origin: NonFiniteOrigin, lead: str) -> str:
    if not origin.counts:
        return ""
    items = sorted(origin.counts.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{name} ({count:,})" for name, count in items[:COUNTS_SHOWN])
    more = f" and {len(items) - COUNTS_SHOWN} more layers" if len(items) > COUNTS_SHOWN else ""
    return f"{lead}: {shown}{more}"


_PHRASES = {
    "input": _input,
    "forward": _forward,
    "loss": _loss,
    "backward": _backward,
    "parameter_gradient": _parameter_gradient,
    "unreproduced": _unreproduced,
    "weight": _weight,
    "not_replayed": _not_replayed,
}


def number(value: float) -> str:
    """A magnitude in three significant digits without exponent padding: 3.4e38, 0.5, nan."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text
