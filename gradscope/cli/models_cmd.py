"""`gradscope models`: list the registered models, or print one model's layer table."""

from pandas.api.types import is_numeric_dtype

from gradscope.errors import UsageError
from gradscope.models import (
    DEFAULT_SHORTCUT,
    SHORTCUTS,
    create_model,
    get_model_spec,
    layer_table,
    model_table,
)


def register(subparsers) -> None:
    """Add the `models` subcommand."""
    parser = subparsers.add_parser(
        "models",
        help="list models, or show one model's layers",
        description="Without NAME, list the registered models with depth and parameter count. "
        "With NAME, print its layers: output shape, parameters and FLOPs on one image.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="a registered model name")
    parser.add_argument(
        "--num-classes", type=int, default=10, help="classes of the linear head (default: 10)"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input side in pixels (default: the model's, 32 for CIFAR, 224 for torchvision)",
    )
    parser.add_argument(
        "--shortcut",
        choices=SHORTCUTS,
        default=None,
        help="CIFAR ResNet shortcut: A = zero-padded identity, B = 1x1 projection (default: B)",
    )
    parser.set_defaults(func=run)


def _as_text(table, thousands_columns) -> str:
    """Table text: thousands separators in `thousands_columns`, text columns left-aligned."""
    text_columns = [c for c in table.columns if not is_numeric_dtype(table[c])]
    table = table.copy()
    for column in thousands_columns:
        table[column] = table[column].map("{:,}".format)
    headers = {}
    for column in text_columns:
        values = table[column].astype(str)
        width = max(len(column), values.str.len().max())
        table[column] = values.str.ljust(width)
        headers[column] = column.ljust(width)
    return table.rename(columns=headers).to_string(index=False)


def list_models_text(num_classes: int) -> str:
    """The model list as printed text."""
    table = model_table(num_classes=num_classes)
    return _as_text(table, ["params"])


def layer_table_text(name: str, num_classes: int, input_size: int | None, shortcut: str) -> str:
    """One model's layer table with totals, as printed text."""
    spec = get_model_spec(name)
    model = create_model(name, num_classes=num_classes, shortcut=shortcut)
    table = layer_table(model, spec.input_size if input_size is None else input_size)
    total_params, total_flops = table.attrs["total_params"], table.attrs["total_flops"]
    header = (
        f"{name} ({spec.family}, depth {spec.depth}), input {table.attrs['input_shape']}, "
        f"{len(table)} layers"
    )
    body = _as_text(table, ["params", "flops"])
    totals = (
        f"total params: {total_params:,}\n"
        f"total FLOPs: {total_flops:,} ({total_flops / 2e6:,.1f}M multiply-accumulates)"
    )
    return f"{header}\n{body}\n{totals}"


def run(args) -> int:
    """Print the model list (no NAME) or NAME's layer table."""
    if args.name is None:
        given = [
            f for f, v in (("--input-size", args.input_size), ("--shortcut", args.shortcut)) if v
        ]
        if given:
            flags = ", ".join(given)
            raise UsageError(f"{flags}: only with a model name, e.g. gradscope models resnet20 ...")
        print(list_models_text(args.num_classes))
        return 0
    shortcut = DEFAULT_SHORTCUT if args.shortcut is None else args.shortcut
    print(layer_table_text(args.name, args.num_classes, args.input_size, shortcut))
    return 0
