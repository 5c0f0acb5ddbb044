"""The blocks a probe plots by (their outputs), and the residual ones' branch and skip paths.

Recognised: the bundled CIFAR nets' `BasicBlock` (residual, or plain in the plain twins),
torchvision's `BasicBlock` and `Bottleneck`, and `nn.TransformerEncoderLayer` /
`nn.TransformerDecoderLayer` (blocks without branch statistics: each holds two residual
branches inside one forward). Whether a module of a user's own computes f(x) + shortcut(x)
cannot be told from outside, so other residual blocks are named by `residual_branches=`:
{block class or name glob: (branch module, shortcut module or None for the identity)}, the
branch module being the last one of the residual branch, the shortcut the module that makes
the skip path (both named relative to the block).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

from gradscope.errors import UsageError


@dataclass(frozen=True)
class Block:
    """One block: its output is plotted by depth; a residual one also has branch and skip."""

    name: str  # qualified name of the block module
    module: nn.Module
    residual: bool  # its output is branch + skip
    branch: nn.Module | None = None  # the last module of the residual branch
    shortcut: nn.Module | None = None  # the module making the skip path; None: the identity


def find_blocks(named_modules, residual_branches=None) -> list[Block]:
    """The blocks among (name, module) pairs, in their order. `residual_branches` names
    residual blocks of a user's own (see the module docstring); an entry matching no module,
    or naming a child a block lacks, raises UsageError."""
    custom = _check_custom(residual_branches)
    used = set()
    blocks = []
    for name, module in named_modules:
        for key, (branch, shortcut) in custom.items():
            if _matches(key, name, module):
                used.add(key)
                blocks.append(_custom_block(name, module, branch, shortcut))
                break
        else:
            block = _known_block(name, module)
            if block is not None:
                blocks.append(block)
    unused = [_show(key) for key in custom if key not in used]
    if unused:
        raise UsageError(f"residual_branches: {', '.join(unused)} matches no module of the model")
    return blocks


def _known_block(name: str, module: nn.Module) -> Block | None:
    from torchvision.models import resnet as tv

    from gradscope.models import BasicBlock

    if isinstance(module, BasicBlock):
        if not module.residual:
            return Block(name, module, residual=False)
        return Block(name, module, True, module.bn2, module.downsample)
    if isinstance(module, tv.BasicBlock):
        return Block(name, module, True, module.bn2, module.downsample)
    if isinstance(module, tv.Bottleneck):
        return Block(name, module, True, module.bn3, module.downsample)
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return Block(name, module, residual=False)
    return None


def _custom_block(name: str, module: nn.Module, branch: str, shortcut: str | None) -> Block:
    def child(path: str) -> nn.Module:
        try:
            return module.get_submodule(path)
        except AttributeError:
            raise UsageError(
                f"residual_branches: block {name!r} ({type(module).__name__}) has no module "
                f"{path!r}; its modules: {', '.join(n for n, _ in module.named_children())}"
            ) from None

    return Block(name, module, True, child(branch), None if shortcut is None else child(shortcut))


def _check_custom(residual_branches) -> dict:
    if residual_branches is None:
        return {}
    if not isinstance(residual_branches, dict):
        raise UsageError(
            "residual_branches must be a dict {block class or name glob: (branch module name, "
            "shortcut module name or None)}"
        )
    for key, value in residual_branches.items():
        ok_key = isinstance(key, str) or (isinstance(key, type) and issubclass(key, nn.Module))
        ok_value = (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and isinstance(value[0], str)
            and (value[1] is None or isinstance(value[1], str))
        )
        if not (ok_key and ok_value):
            raise UsageError(
                f"residual_branches entry {_show(key)}: {value!r}: expected a block class or name "
                "glob, mapped to (branch module name, shortcut module name or None)"
            )
    return dict(residual_branches)


def _matches(key, name: str, module: nn.Module) -> bool:
    return fnmatchcase(name, key) if isinstance(key, str) else isinstance(module, key)


def _show(key) -> str:
    return repr(key) if isinstance(key, str) else key.__name__


def describe_blocks(blocks: list[Block]) -> str:
    """What the probe found, in one sentence for its output."""
    residual = [b for b in blocks if b.residual]
    if not blocks:
        return (
            "no blocks recognised: the figures plot every watched layer (gradscope recognises "
            "its CIFAR nets' and torchvision's ResNet blocks and PyTorch's transformer layers; "
            "name residual blocks of your own with residual_branches=)"
        )
    kinds = sorted({type(b.module).__name__ for b in blocks})
    text = f"{len(blocks)} blocks ({', '.join(kinds)}), {len(residual)} of them residual"
    return text
