"""The `gradscope` command line: subcommands, friendly errors and exit codes."""

import argparse
import importlib
import sys

from gradscope.errors import GradscopeError

# Each subcommand lives in its own module with `register(subparsers)`, which adds a parser
# whose `func(args) -> int | None` does the work through the Python API.
COMMANDS = (
    "gradscope.cli.record_cmd",
    "gradscope.cli.dashboard_cmd",
    "gradscope.cli.models_cmd",
    "gradscope.cli.inspect_cmd",
    "gradscope.cli.export_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="gradscope", description="Gradient-flow diagnostics for PyTorch."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv=None) -> int:
    """Entry point of the `gradscope` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except GradscopeError as e:
        print(f"gradscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
