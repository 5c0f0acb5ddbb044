"""GradscopeCallback for `pytorch_lightning` 2.x, whose Trainer takes only its own callbacks."""

from gradscope.integrations._common import missing_framework

try:
    import pytorch_lightning
    from pytorch_lightning import Callback, LightningModule
except ImportError as e:
    raise missing_framework("pytorch_lightning", "lightning", __name__, e) from e

from gradscope.integrations._lightning_hooks import LightningHooks, check_lightning_version

check_lightning_version(pytorch_lightning)


class GradscopeCallback(LightningHooks, Callback):
    """`gradscope.integrations.lightning.GradscopeCallback` for a `pytorch_lightning.Trainer`.

    Args:
        path: the HDF5 run file to write.
        every: record every N-th optimizer step, or a callable `step -> bool`.
        **attach_kwargs: any other keyword argument of `gradscope.attach`.
    """

    _package = pytorch_lightning
    _lightning_module = LightningModule


__all__ = ["GradscopeCallback"]
