"""`gradscope inspect RUN.h5 [--json]`: a run's summary, latest record, metrics and diagnosis."""

import json
import sys

from gradscope.report import print_report, report_dict
from gradscope.store import open_run


def register(subparsers) -> None:
    """Add the `inspect` subcommand."""
    parser = subparsers.add_parser(
        "inspect", help="summarise a run file", description="Summarise a gradscope run file."
    )
    parser.add_argument("run", metavar="RUN.h5", help="path of the run file")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    """Open the run named on the command line and print its report."""
    with open_run(args.run) as opened:
        if args.json:
            json.dump(report_dict(opened), sys.stdout, indent=2)
            print()
        else:
            print_report(opened, sys.stdout)
    return 0
