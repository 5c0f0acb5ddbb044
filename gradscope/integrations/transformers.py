"""GradscopeCallback for the Hugging Face `Trainer`: one record per optimizer step."""

from gradscope.integrations._common import (
    RecorderOwner,
    missing_framework,
    numbers_only,
    qualified_name,
)

try:
    import transformers
    from transformers import TrainerCallback
except ImportError as e:
    raise missing_framework("transformers", "transformers", __name__, e) from e

import torch

from gradscope.errors import UsageError

if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
    raise ImportError(
        f"gradscope.integrations.transformers needs a Trainer with the on_pre_optimizer_step "
        f"event (transformers 4.46 or newer), found {transformers.__version__}: "
        "pip install -U 'torch-gradscope[transformers]'"
    )

RUN_ATTRS = (
    "framework",
    "framework_version",
    "model_qualname",
    "model_type",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "precision",
    "gradients_read",
)
GRADIENTS_READ = (
    "on_pre_optimizer_step: after the step's backward passes, AMP unscaling and gradient "
    "clipping (max_grad_norm), before optimizer.step()"
)


class GradscopeCallback(RecorderOwner, TrainerCallback):
    """Records the model that `Trainer.train()` trains into the run file `path`.

    `Trainer(..., callbacks=[GradscopeCallback("runs/exp/gpt2.h5", every=10)])`: at
    `on_train_begin` (after a checkpoint, if any, is restored: steps go on from
    `state.global_step`) it calls `gradscope.attach(model, path, optimizer=...)` on the
    Trainer's model and optimizer, and closes the file at `on_train_end`.

    - Gradients are read in `on_pre_optimizer_step`, where the Trainer has summed every
      micro-batch of `gradient_accumulation_steps` (one record per optimizer step), unscaled
      them under fp16 and clipped them to `max_grad_norm`: the statistics are of the clipped
      gradients. The Trainer's own `grad_norm` metric (stored when it logs) is the total norm
      before clipping.
    - What the Trainer logs (`loss`, `learning_rate`, `grad_norm`, `epoch`, evaluation
      metrics, every `logging_steps`) is stored in `run.metrics` against the optimizer step
      just finished: gradscope's step s is the Trainer's `global_step` s + 1.
    - The run file's attributes: `framework`, `framework_version`, `model_qualname`,
      `model_type`, `gradient_accumulation_steps`, `max_grad_norm`, `precision`,
      `gradients_read`.
    - The Trainer has no event for an exception: if `train()` raises, call `close()` (the file
      is closed at exit otherwise).

    Args:
        path: the HDF5 run file to write.
        every: record every N-th optimizer step, or a callable `step -> bool`.
        **attach_kwargs: any other keyword argument of `gradscope.attach` (`stats`, `layers`,
            `batch_sample`, `overwrite`, `resume`, `start_step`, `attrs`, `nonfinite`, ...);
            the callback passes the Trainer's optimizer itself. With `nonfinite` (default
            "watch") the check for an inf or NaN runs where the gradients are read, and a step
            it trips is replayed to find where the value came from (docs/nonfinite.md).
    """

    run_attrs = RUN_ATTRS

    def __init__(self, path, every=1, **attach_kwargs):
        super().__init__(path, every, **attach_kwargs)
        self._optimizer = None  # the torch optimizer inside the Trainer's wrapper
        self._read_at = None  # the step whose gradients on_pre_optimizer_step read

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Attach to the Trainer's model and (unwrapped) optimizer."""
        if model is None or optimizer is None:
            raise UsageError(
                "GradscopeCallback needs the Trainer's model and optimizer at on_train_begin"
            )
        self._optimizer = _torch_optimizer(optimizer)
        self._attach(model, self._optimizer, _run_attrs(args, model), state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        """Read the gradients the optimizer is about to use."""
        if self._attached():
            self._read_at = self.recorder.current_step
            self.recorder.read_gradients()

    def on_step_end(self, args, state, control, **kwargs):
        """After a step the GradScaler skipped, drop its forward and backward passes."""
        if self._attached() and self._read_at == self.recorder.current_step:
            # optimizer.step() did not run. The Trainer zeroes gradients with model.zero_grad(),
            # which the recorder does not see; the optimizer's zero_grad (the gradients are zero
            # already) tells it to drop the passes of the skipped step.
            self._optimizer.zero_grad()

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Store the numbers the Trainer logs against the optimizer step just finished."""
        if self._attached() and logs:
            values = numbers_only(logs)
            if values:
                self.recorder.log(**values)

    def on_train_end(self, args, state, control, **kwargs):
        """Close the run file."""
        self.close()


def _torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (whose step calls it)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(
            f"GradscopeCallback needs a torch optimizer, the Trainer has {type(optimizer).__name__}"
        )
    return optimizer


def _run_attrs(args, model) -> dict:
    config = getattr(model, "config", None)
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {
        "framework": "transformers",
        "framework_version": transformers.__version__,
        "model_qualname": qualified_name(type(model)),
        "model_type": getattr(config, "model_type", None),
        "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
        "max_grad_norm": float(args.max_grad_norm) if args.max_grad_norm else None,
        "precision": precision,
        "gradients_read": GRADIENTS_READ,
    }


__all__ = ["GradscopeCallback"]
