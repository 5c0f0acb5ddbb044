"""GradscopeCallback's Lightning hooks, shared by the lightning and pytorch_lightning flavours."""

from __future__ import annotations

from types import ModuleType

import torch

from gradscope.errors import UsageError
from gradscope.integrations._common import RecorderOwner, numbers_only, qualified_name

RUN_ATTRS = (
    "framework",
    "framework_version",
    "model_qualname",
    "strategy",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "gradients_read",
)
GRADIENTS_READ = (
    "on_before_optimizer_step: after the step's backward passes and AMP unscaling, "
    "before gradient clipping"
)
CUSTOM_CLIPPING = "custom (configure_gradient_clipping)"


def check_lightning_version(package: ModuleType) -> None:
    """Refuse Lightning before 2.0, whose hooks have other signatures."""
    major = int(package.__version__.split(".")[0])
    if major < 2:
        raise ImportError(
            f"gradscope's GradscopeCallback needs Lightning 2.x, found {package.__name__} "
            f"{package.__version__}: pip install -U 'torch-gradscope[lightning]'"
        )


class LightningHooks(RecorderOwner):
    """Attach at the start of training, read the gradients in `on_before_optimizer_step`, store
    what the module logs against the optimizer step, close at the end of fit or on an error."""

    run_attrs = RUN_ATTRS
    _package: ModuleType  # lightning or pytorch_lightning, set by the flavour
    _lightning_module: type  # that package's LightningModule

    def __init__(self, path, every=1, **attach_kwargs):
        super().__init__(path, every, **attach_kwargs)
        self._seen: dict = {}  # metric name -> the value last stored (kept: its storage stays)
        self._stored_through = -1  # the last optimizer step whose logged metrics are stored

    # ----- Lightning's hooks ------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        """Attach to the LightningModule (after Lightning restored a checkpoint, if any)."""
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise UsageError(
                f"GradscopeCallback records a module trained by one optimizer; "
                f"{type(pl_module).__name__} has {len(optimizers)}: call gradscope.attach(module, "
                "path, optimizer=opt, manual_gradients=True) for the one to watch and "
                "rec.read_gradients() in on_before_optimizer_step"
            )
        attrs = self._run_attrs(trainer, pl_module)
        self._attach(pl_module, optimizers[0], attrs, trainer.global_step)
        self._seen = dict(trainer.logged_metrics)  # values from before this fit are not ours
        self._stored_through = self.recorder.current_step - 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Read the gradients of the step: after backward and unscaling, before clipping."""
        if not self._attached():
            return
        if self.recorder.read_gradients() and self._clips_by_norm(trainer, pl_module):
            self.recorder.log(grad_clip_coef=_clip_coef(optimizer, trainer.gradient_clip_val))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After an optimizer step: store what the module logged during it."""
        if self._attached() and self.recorder.current_step - 1 > self._stored_through:
            self._store_logged_metrics(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Store the validation metrics against the last optimizer step."""
        if self._attached() and not trainer.sanity_checking:
            self._store_logged_metrics(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Store what was logged at the end of the previous epoch (the module's hooks run after
        the callbacks' there)."""
        if self._attached():
            self._store_logged_metrics(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        """Store what the last epoch's end logged."""
        if self._attached():
            self._store_logged_metrics(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        """Close the run file."""
        self.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Close the run file: what was recorded up to the error stays readable."""
        self.close()

    def teardown(self, trainer, pl_module, stage) -> None:
        """Close the run file if fit ended another way."""
        if stage == "fit":
            self.close()

    # ----- the rest ---------------------------------------------------------------------------

    def _store_logged_metrics(self, trainer) -> None:
        # trainer.logged_metrics keeps every value logged so far in the fit (as detached views);
        # each self.log makes a new tensor, so a value not sharing the storage seen is new.
        logged = trainer.logged_metrics.items()
        new = {k: v for k, v in logged if not _same_value(self._seen.get(k), v)}
        self._seen.update(new)
        self._stored_through = self.recorder.current_step - 1
        values = numbers_only(new)
        if values:
            self.recorder.log(**values)  # the step in progress, or the one just finished

    def _clips_by_norm(self, trainer, pl_module) -> bool:
        return (
            bool(trainer.gradient_clip_val)
            and _clip_algorithm(trainer) == "norm"
            and not self._custom_clipping(pl_module)
        )

    def _custom_clipping(self, pl_module) -> bool:
        hook = type(pl_module).configure_gradient_clipping
        return hook is not self._lightning_module.configure_gradient_clipping

    def _run_attrs(self, trainer, pl_module) -> dict:
        clip_val = trainer.gradient_clip_val
        if self._custom_clipping(pl_module):
            algorithm = CUSTOM_CLIPPING
        else:
            algorithm = _clip_algorithm(trainer) if clip_val else None
        return {
            "framework": self._package.__name__,
            "framework_version": self._package.__version__,
            "model_qualname": qualified_name(type(pl_module)),
            "strategy": type(trainer.strategy).__name__,
            "precision": str(trainer.precision),
            "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
            "gradient_clip_val": float(clip_val) if clip_val else None,
            "gradient_clip_algorithm": algorithm,
            "gradients_read": GRADIENTS_READ,
        }


def _same_value(seen, value) -> bool:
    """Whether `value` is the tensor `seen` (or a view of it): the same logged value."""
    if isinstance(seen, torch.Tensor) and isinstance(value, torch.Tensor):
        return seen.device == value.device and (
            seen.untyped_storage().data_ptr() == value.untyped_storage().data_ptr()
        )
    return seen is value


def _clip_algorithm(trainer) -> str:
    """ "norm" or "value": Lightning clips by norm unless told otherwise."""
    algorithm = trainer.gradient_clip_algorithm
    return str(getattr(algorithm, "value", algorithm) or "norm").lower()


def _clip_coef(optimizer, clip_val: float) -> torch.Tensor:
    """The factor Lightning's norm clipping is about to scale every gradient by (as in
    torch.nn.utils.clip_grad_norm_ over the optimizer's parameters)."""
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    total = torch.nn.utils.get_total_norm(grads)
    return torch.clamp(float(clip_val) / (total + 1e-6), max=1.0)
