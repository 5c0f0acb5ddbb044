"""The model registry: `@register_model` factories, `create_model`, `list_models`, `model_table`."""

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pandas as pd
import torch
import torch.nn as nn

from gradscope.errors import UsageError

FAMILIES = ("cifar-resnet", "cifar-plain", "torchvision")  # the order `list_models` sorts by
DEFAULT_SHORTCUT = "B"


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model name."""

    name: str  # registered name, e.g. "resnet56"
    factory: Callable[..., nn.Module]  # builds the model; takes num_classes (and shortcut, if any)
    family: str  # one of FAMILIES
    depth: int  # number of weight layers (convs and the linear head)
    input_size: int  # default square input side in pixels (32 for CIFAR, 224 for ImageNet)
    shortcuts: tuple[str, ...] = ()  # shortcut kinds the factory accepts; () = no choice to make
    has_width: bool = False  # the factory takes `width=` (the first stage's channels)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    *,
    family: str,
    depth: int,
    input_size: int,
    shortcuts: tuple[str, ...] = (),
    has_width: bool = False,
):
    """Decorator: register a factory `fn(num_classes, [shortcut], [width]) -> nn.Module`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; add it to FAMILIES {FAMILIES}")

    def decorate(factory):
        name = factory.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(
            name, factory, family, depth, input_size, tuple(shortcuts), has_width
        )
        return factory

    return decorate


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, by family (CIFAR ResNet, plain, torchvision) then depth."""
    if family is not None and family not in FAMILIES:
        raise UsageError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    specs = [s for s in _REGISTRY.values() if family is None or s.family == family]
    specs.sort(key=lambda s: (FAMILIES.index(s.family), s.depth))
    return [s.name for s in specs]


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry of `name`; an unknown name raises UsageError listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(list_models())
        raise UsageError(f"unknown model {name!r}; valid names: {valid}") from None


def create_model(
    name: str, num_classes: int = 10, shortcut: str = DEFAULT_SHORTCUT, width: int | None = None
) -> nn.Module:
    """Build a registered model with freshly initialised weights.

    `shortcut` chooses the CIFAR ResNets' shortcut where the shape changes: "A" (zero-padded
    identity, the paper's CIFAR choice) or "B" (1x1 projection + BatchNorm, the default).
    Plain nets have no shortcut and torchvision's ResNets always project, so for them only the
    default "B" is accepted. `width` sets the CIFAR nets' first-stage channels (16 when None;
    the later stages have 2x and 4x), e.g. for a width sweep; the torchvision nets have none.
    """
    spec = get_model_spec(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    options = {"num_classes": num_classes}
    if width is not None:
        if not spec.has_width:
            raise UsageError(
                f"{name} ({spec.family}) has no width option; width sweeps take the CIFAR "
                "ResNets and plain nets, or a model factory of your own taking width="
            )
        options["width"] = width
    if spec.shortcuts:
        if shortcut not in spec.shortcuts:
            raise UsageError(
                f"{name}: shortcut must be one of {', '.join(spec.shortcuts)}, got {shortcut!r}"
            )
        return spec.factory(shortcut=shortcut, **options)
    if shortcut != DEFAULT_SHORTCUT:
        raise UsageError(
            f"{name} ({spec.family}) has no shortcut option; leave shortcut at the default "
            f"{DEFAULT_SHORTCUT!r} (shortcut choices exist for the cifar-resnet family only)"
        )
    return spec.factory(**options)


def load_factory(spec: str) -> tuple[str, Callable[..., nn.Module]]:
    """(name, factory) of a model given by a registered name or as "module:callable".

    A registered name gives a factory taking `create_model`'s options (`num_classes`,
    `shortcut`, `width`). "package.module:function" imports the module (the current folder
    first on the import path, as `python -m` does) and gives the function itself, named by
    its last part; it is called with no argument, or with `width=` for a width sweep.
    """
    if ":" not in spec:
        get_model_spec(spec)  # an unknown name raises, listing the valid ones

        def registered(**options) -> nn.Module:
            return create_model(spec, **options)

        return spec, registered
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"{spec!r}: expected a model name or module:factory, e.g. mymodels:mlp")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"{spec!r}: cannot import {module_name!r}: {e}") from e
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise UsageError(f"{spec!r}: {module_name} has no callable {attribute!r}")
    return attribute.rsplit(".", 1)[-1], factory


@cache
def count_parameters(name: str, num_classes: int = 10, shortcut: str = DEFAULT_SHORTCUT) -> int:
    """Number of parameters of a registered model, built on the meta device (no weight memory).

    Cached: building ResNet-1202's 4,000 modules takes about a second.
    """
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, shortcut=shortcut)
    return sum(p.numel() for p in model.parameters())


def model_table(num_classes: int = 10, family: str | None = None) -> pd.DataFrame:
    """One row per registered model: name, family, depth, default input size, parameters."""
    rows = []
    for name in list_models(family):
        spec = _REGISTRY[name]
        params = count_parameters(name, num_classes=num_classes)
        rows.append((name, spec.family, spec.depth, spec.input_size, params))
    return pd.DataFrame(rows, columns=["name", "family", "depth", "input_size", "params"])
