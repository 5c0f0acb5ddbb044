"""`gradscope export`: write a figure of one or more runs to a PNG file."""

from contextlib import ExitStack

from gradscope import figures
from gradscope.errors import UsageError
from gradscope.export import check_png_size, stop_renderer, write_png
from gradscope.store import open_run

FIGURES = ("heatmap", "flow", "curves", "ratio")


def register(subparsers) -> None:
    """Add the `export` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="write a figure (heatmap, flow, curves, ratio) of runs to a PNG",
        description="Write a figure of one or more run files to a PNG (rendered by kaleido).",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN.h5", help="run files")
    parser.add_argument("--figure", choices=FIGURES, default="heatmap", help="which figure")
    parser.add_argument("--stat", default="grad_norm", help="statistic (not used by curves)")
    parser.add_argument(
        "--step",
        type=int,
        help="flow only: step to show, or the nearest recorded one (default: latest)",
    )
    parser.add_argument(
        "--window",
        type=int,
        nargs=2,
        metavar=("START", "STOP"),
        help="flow only: average the records with START <= step < STOP",
    )
    parser.add_argument(
        "--depth-axis",
        choices=figures.DEPTH_AXES,
        default="index",
        help="flow only: x as layer index or normalized depth 0..1",
    )
    parser.add_argument("--types", nargs="+", help="keep layers of these classes, e.g. Conv2d")
    parser.add_argument("--pattern", help="keep layers whose name matches this glob")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="output PNG path")
    parser.add_argument("--width", type=int, help="width in layout pixels (default 700)")
    parser.add_argument("--height", type=int, help="height in layout pixels (default 500)")
    parser.add_argument("--scale", type=float, default=1.0, help="pixel multiplier")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Open the runs, build the figure, write the PNG and print its path."""
    if args.figure != "flow":
        for option, value in (("--step", args.step), ("--window", args.window)):
            if value is not None:
                raise UsageError(f"{option} applies only to --figure flow")
    if args.figure == "ratio" and len(args.runs) != 2:
        raise UsageError(f"--figure ratio needs exactly 2 runs, got {len(args.runs)}")
    check_png_size(args.width, args.height, args.scale)
    with ExitStack() as stack:
        runs = [stack.enter_context(open_run(path)) for path in args.runs]
        fig = build_figure(args, runs)
        try:
            path = write_png(fig, args.out, width=args.width, height=args.height, scale=args.scale)
        finally:
            stop_renderer()  # close Chrome now, while the process can still tidy up after it
    print(path)
    return 0


def build_figure(args, runs):
    """The figure the arguments ask for."""
    selection = {"types": args.types, "pattern": args.pattern}
    if args.figure == "heatmap":
        return figures.depth_step_heatmap(runs, args.stat, **selection)
    if args.figure == "flow":
        return figures.flow_curve(
            runs,
            args.stat,
            step=args.step,
            window=args.window,
            depth_axis=args.depth_axis,
            **selection,
        )
    if args.figure == "ratio":
        return figures.ratio_heatmap(runs[0], runs[1], args.stat, **selection)
    return figures.training_curves(runs)
