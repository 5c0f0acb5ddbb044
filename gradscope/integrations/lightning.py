"""GradscopeCallback for Lightning 2.x (the `lightning` package): one record per optimizer step."""

from gradscope.integrations._common import missing_framework

try:
    import lightning
    from lightning.pytorch import Callback, LightningModule
except ImportError as e:
    raise missing_framework("lightning", "lightning", __name__, e) from e

from gradscope.integrations._lightning_hooks import LightningHooks, check_lightning_version

check_lightning_version(lightning)


class GradscopeCallback(LightningHooks, Callback):
    """Records the LightningModule that `Trainer.fit` trains into the run file `path`.

    `Trainer(callbacks=[GradscopeCallback("runs/exp/model.h5", every=10)])`: at the start of
    training (`on_train_start`, after Lightning restored a checkpoint, so steps go on from
    `trainer.global_step`) it calls `gradscope.attach(module, path, optimizer=...)`, and closes
    the file at the end of fit or on an exception.

    - Gradients are read in `on_before_optimizer_step`: after the backward passes of the step
      (all of them under `accumulate_grad_batches`: one record per optimizer step) and AMP
      unscaling, before gradient clipping. With Lightning's norm clipping
      (`gradient_clip_val`), the metric `grad_clip_coef` holds the factor the clipping then
      scaled every gradient by, on each recorded step: clipped `grad_norm` = `grad_norm` x it.
    - What the module logs with `self.log(...)` (on step, on epoch, in validation) is stored in
      `run.metrics` against the optimizer step it was logged in (validation and epoch-end
      values: the last step before them), once per value logged.
    - The run file's attributes say where it came from: `framework`, `framework_version`,
      `model_qualname` (the module's class), `strategy`, `precision`,
      `accumulate_grad_batches`, `gradient_clip_val`, `gradient_clip_algorithm`,
      `gradients_read`.
    - Under DDP or FSDP it records as `gradscope.attach` does there.

    Args:
        path: the HDF5 run file to write.
        every: record every N-th optimizer step, or a callable `step -> bool`.
        **attach_kwargs: any other keyword argument of `gradscope.attach` (`stats`, `layers`,
            `batch_sample`, `overwrite`, `resume`, `start_step`, `attrs`, `nonfinite`, ...);
            the callback passes the module's optimizer itself. With `nonfinite` (default
            "watch") the check for an inf or NaN runs where the gradients are read, and a step
            it trips is replayed to find where the value came from (docs/nonfinite.md).
    """

    _package = lightning
    _lightning_module = LightningModule


__all__ = ["GradscopeCallback"]
