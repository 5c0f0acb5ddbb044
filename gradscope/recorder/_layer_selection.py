"""Choosing which modules of a model the recorder watches: name globs and module types."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from gradscope.errors import UsageError
from gradscope.recorder._wrappers import user_named_modules


def owns_parameters(module: nn.Module) -> bool:
    """True when the module has parameters of its own (not only in its children)."""
    return next(module.parameters(recurse=False), None) is not None


def select_modules(model: nn.Module, layers=None) -> list[tuple[str, nn.Module]]:
    """The watched (qualified name, module) pairs, in registration order.

    Names are those of the model inside its wrappers (DDP, FSDP1, torch.compile): see
    `_wrappers.user_named_modules`.

    `layers=None` watches every module that owns parameters directly. Otherwise `layers` is a
    glob on qualified names (`"layer1.*.conv*"`), a module type (`nn.ReLU`), a module of the
    model itself, or a list of them; a module is watched when any item matches it, and every
    item must match something.
    """
    named = user_named_modules(model)
    if layers is None:
        chosen = [(name, m) for name, m in named if owns_parameters(m)]
        if not chosen:
            raise UsageError(
                f"{type(model).__name__} has no parameters to watch; "
                "pick modules with layers=[glob or type, ...]"
            )
        return chosen
    items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not items:
        raise UsageError("layers=[] selects nothing; pass None to watch every parametrized module")
    # modules given as themselves are matched by identity: a long list costs one set lookup
    given = {id(item) for item in items if isinstance(item, nn.Module)}
    patterns = [item for item in items if not isinstance(item, nn.Module)]
    present = {id(m) for _, m in named}
    for item in items:
        if isinstance(item, nn.Module):
            if id(item) not in present:
                raise UsageError(
                    f"layers item {type(item).__name__} (a module) is not part of the model"
                )
            continue
        if not (isinstance(item, str) or isinstance(item, type)):
            raise UsageError(
                f"layers items must be name globs, module types or modules, got {item!r}"
            )
        if not any(_matches(item, name, m) for name, m in named):
            raise UsageError(f"layers item {_show(item)} matches no module; {_inventory(named)}")
    return [
        (name, m)
        for name, m in named
        if id(m) in given or any(_matches(i, name, m) for i in patterns)
    ]


def _matches(item, name: str, module: nn.Module) -> bool:
    if isinstance(item, str):
        return fnmatchcase(name, item)
    return isinstance(module, item)


def _show(item) -> str:
    return repr(item) if isinstance(item, str) else item.__name__


def _inventory(named) -> str:
    names = [name for name, _ in named]
    types = sorted({type(m).__name__ for _, m in named})
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return f"module names: {shown}; module types: {', '.join(types)}"
