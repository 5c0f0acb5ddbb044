"""The `gradscope` command line: subcommands, friendly errors and exit codes."""

import argparse
import importlib
import os
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
    "gradscope.cli.probe_cmd",
)


def command_name(module_name: str) -> str:
    """The subcommand a module provides: `gradscope.cli.record_cmd` -> `record`."""
    return module_name.rsplit(".", 1)[-1].removesuffix("_cmd")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered (or only the one named)."""
    parser = argparse.ArgumentParser(
        prog="gradscope", description="Gradient-flow diagnostics for PyTorch."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        if only is None or command_name(module_name) == only:
            importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv=None) -> int:
    """Entry point of the `gradscope` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Import only the named command's module: some pull in torch, which takes seconds to load.
    known = {command_name(m) for m in COMMANDS}
    named = argv[0] if argv and argv[0] in known else None
    try:
        args = build_parser(only=named).parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while torch loads
        print("interrupted", file=sys.stderr)
        return 130
    args.argv = argv  # the command line as given (`record --nproc-per-node` passes it on)
    try:
        code = args.func(args)
    except GradscopeError as e:
        print(f"gradscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into a reader that stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(code or 0)
