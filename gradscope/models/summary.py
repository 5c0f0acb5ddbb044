"""Per-layer table of a model: qualified name, type, output shape, parameters, FLOPs."""

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from gradscope.errors import UsageError

COLUMNS = ["name", "type", "output_shape", "params", "flops"]


def _shape_of(output) -> str:
    """Shape of a module output as text; tuples and lists of tensors show each shape."""
    if isinstance(output, torch.Tensor):
        return str(tuple(output.shape))
    if isinstance(output, (tuple, list)):
        return "[" + ", ".join(_shape_of(o) for o in output) + "]"
    return type(output).__name__


def _flops_by_module(counter: FlopCounterMode, model: nn.Module) -> dict[str, int]:
    """FLOPs per qualified name, from the counter's keys "<RootClass>.<qualified name>"."""
    prefix = type(model).__name__ + "."
    flops = {}
    for key, by_op in counter.get_flop_counts().items():
        if key.startswith(prefix):
            flops[key[len(prefix) :]] = sum(by_op.values())
    return flops


def layer_table(model: nn.Module, input_size: int, in_channels: int = 3) -> pd.DataFrame:
    """Run one image of `input_size` x `input_size` through `model` and tabulate its leaf layers.

    Rows follow execution order; `params` counts each layer's own parameters and `flops` is
    what `torch.utils.flop_counter` counts (2 per multiply-accumulate). `df.attrs` holds
    `total_params` (all of the model's parameters) and `total_flops` (the counter's total).
    """
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
        raise UsageError(f"input size must be a positive integer (pixels), got {input_size!r}")
    leaves = {name: m for name, m in model.named_modules() if name and not any(m.children())}
    shapes: dict[str, str] = {}  # insertion order is first-call order

    def remember_shape(name):
        def hook(module, args, output):
            shapes.setdefault(name, _shape_of(output))

        return hook

    handles = [m.register_forward_hook(remember_shape(n)) for n, m in leaves.items()]
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    x = torch.zeros(1, in_channels, input_size, input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()  # batch of one: BatchNorm must use running statistics
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except RuntimeError as e:
        raise UsageError(
            f"{type(model).__name__} cannot run on a {input_size}x{input_size} input ({e}); "
            "try a larger input size"
        ) from e
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    flops = _flops_by_module(counter, model)
    rows = [
        (
            name,
            type(leaves[name]).__name__,
            shape,
            sum(p.numel() for p in leaves[name].parameters(recurse=False)),
            flops.get(name, 0),
        )
        for name, shape in shapes.items()
    ]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["total_params"] = sum(p.numel() for p in model.parameters())
    table.attrs["total_flops"] = counter.get_total_flops()
    table.attrs["input_shape"] = tuple(x.shape)
    return table
