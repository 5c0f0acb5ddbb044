"""The user's own model inside wrappers: DDP, FSDP1, torch.compile and checkpoint wrappers.

Layer names and types are those of the unwrapped model, so a run recorded under DDP or FSDP
names its layers as a one-process run of the same model does. The wrapper classes are looked
up in `sys.modules` only: a wrapper whose module was never imported cannot be in the model,
and `attach` on a plain model imports nothing of torch.distributed.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

ROOT_NAME = "model"  # the name recorded for the root module when it is watched itself

# (module that defines the wrapper, class name, attribute holding the wrapped module)
_WRAPPERS = (
    ("torch.nn.parallel.distributed", "DistributedDataParallel", "module"),
    (
        "torch.distributed.fsdp.fully_sharded_data_parallel",
        "FullyShardedDataParallel",
        "_fsdp_wrapped_module",
    ),
    ("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),
    (
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper",
        "CheckpointWrapper",
        "_checkpoint_wrapped_module",
    ),
)


def wrapped_attribute(module: nn.Module) -> str | None:
    """The attribute under which `module`, a known wrapper, holds the module it wraps, or None."""
    for module_name, class_name, attribute in _WRAPPERS:
        defining = sys.modules.get(module_name)
        cls = getattr(defining, class_name, None) if defining is not None else None
        if cls is not None and isinstance(module, cls):
            return attribute
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any wrappers around its root (DDP, FSDP1, torch.compile)."""
    attribute = wrapped_attribute(model)
    while attribute is not None:
        model = getattr(model, attribute)
        attribute = wrapped_attribute(model)
    return model


def replay_root(model: nn.Module) -> nn.Module:
    """The module a replay of a step runs: the model inside torch.compile (run eagerly) and
    DDP (no gradient reduction); an FSDP1 wrapper stays, its forward gathers the parameters."""
    while True:
        attribute = wrapped_attribute(model)
        if attribute not in ("_orig_mod", "module"):
            return model
        model = getattr(model, attribute)


def user_named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every module of the unwrapped model, in registration order.

    Wrappers are transparent: they are left out and their wrapped module takes their name,
    so `_fsdp_wrapped_module.layer1._fsdp_wrapped_module.0` is `layer1.0`; the root is "model".
    A module reachable twice is listed once, under its first name (as `named_modules` does).
    """
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def walk(module: nn.Module, name: str) -> None:
        attribute = wrapped_attribute(module)
        if attribute is not None:
            walk(getattr(module, attribute), name)
            return
        if id(module) in seen:
            return
        seen.add(id(module))
        found.append((name or ROOT_NAME, module))
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(model, "")
    return found


def user_type_name(module: nn.Module) -> str:
    """The class name the user wrote: FSDP2's `fully_shard` turns a Linear into an FSDPLinear."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    fsdp_module = getattr(fsdp, "FSDPModule", None) if fsdp is not None else None
    cls = type(module)
    if fsdp_module is not None and isinstance(module, fsdp_module):
        bases = [base for base in cls.__bases__ if not issubclass(base, fsdp_module)]
        if bases:
            cls = bases[0]
    return cls.__name__


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """The part of `tensor` this rank holds: a DTensor's local shard, else the tensor itself."""
    dtensor = _dtensor_class()
    if dtensor is not None and isinstance(tensor, dtensor):
        return tensor.to_local()
    return tensor


def _dtensor_class():
    """torch's DTensor class if it was imported (FSDP2 imports it), else None."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None
