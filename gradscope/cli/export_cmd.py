"""`gradscope export`: write a figure of one or more runs to a PNG file."""

from contextlib import ExitStack
from pathlib import Path

from gradscope import figures
from gradscope.errors import UsageError
from gradscope.export import (
    DEFAULT_FONT_SIZE,
    TEMPLATES,
    check_png_size,
    default_size,
    stop_renderer,
    style_for_print,
    write_png,
)
from gradscope.store import open_run

FIGURES = ("heatmap", "flow", "curves", "ratio", "spp", "widths")
PROBE_FIGURES = ("spp", "widths")  # of probe files (gradscope probe): --stat has its own default
DEFAULT_STAT = "grad_norm"  # of the other figures


def register(subparsers) -> None:
    """Add the `export` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="write a figure (heatmap, flow, curves, ratio; of probes: spp, widths) to a PNG",
        description="Write a figure of one or more run files to a PNG (rendered by kaleido).",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN.h5", help="run files")
    parser.add_argument("--figure", choices=FIGURES, default="heatmap", help="which figure")
    parser.add_argument(
        "--stat",
        default=None,
        help=f"statistic (not used by curves; default: {DEFAULT_STAT}; spp: Brock et al.'s "
        f"{', '.join(figures.SPP_STATS)}, one panel each; widths: {figures.DEFAULT_WIDTH_STAT})",
    )
    parser.add_argument(
        "--step",
        type=int,
        help="flow: step to show, or the nearest recorded one (default: the latest step every "
        "run has); spp and widths: the probe's sweep step (default: spp 0, the initialization; "
        "widths the last)",
    )
    parser.add_argument(
        "--spp-layers",
        choices=figures.SPP_LAYERS,
        default="blocks",
        help="spp only: the blocks' outputs (default; every layer for a model without blocks) "
        "or every layer",
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
        default="aligned",
        help="flow only: x as layer index aligned by layer name across runs (default), each "
        "run's own index, or normalized depth 0..1",
    )
    parser.add_argument(
        "--lines",
        choices=figures.FLOW_LINES,
        default="by_type",
        help="flow only: one line per layer type (default) or one through all layers",
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        default=figures.DEFAULT_SMOOTHING,
        help="curves only: EMA weight of the training curves in [0, 1), 0 = off (default: "
        f"{figures.DEFAULT_SMOOTHING:g})",
    )
    parser.add_argument(
        "--numerator",
        metavar="RUN",
        help="ratio only: the run on top of the ratio (red where it has more), one of the two "
        "given, by file path, label (folder/model) or model name (default: the first)",
    )
    parser.add_argument("--types", nargs="+", help="keep layers of these classes, e.g. Conv2d")
    parser.add_argument("--pattern", help="keep layers whose name matches this glob")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="output PNG path")
    parser.add_argument(
        "--width", type=int, help="width in layout pixels (default: fits the figure)"
    )
    parser.add_argument(
        "--height",
        type=int,
        help="height in layout pixels (default: heatmaps fit their layers, others 550)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="pixel multiplier")
    parser.add_argument(
        "--font-size",
        type=int,
        default=DEFAULT_FONT_SIZE,
        help=f"base font size in layout pixels (default: {DEFAULT_FONT_SIZE})",
    )
    parser.add_argument(
        "--template",
        choices=TEMPLATES,
        default="plotly",
        help="plotly (the dashboard's look) or paper (white, black axes)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    """Open the runs, build the figure, write the PNG and print its path."""
    if args.figure != "flow":
        if args.window is not None:
            raise UsageError("--window applies only to --figure flow")
        if args.step is not None and args.figure not in PROBE_FIGURES:
            raise UsageError("--step applies only to --figure flow, spp and widths")
    if args.figure != "ratio" and args.numerator is not None:
        raise UsageError("--numerator applies only to --figure ratio")
    if args.figure == "ratio" and len(args.runs) != 2:
        raise UsageError(f"--figure ratio needs exactly 2 runs, got {len(args.runs)}")
    check_png_size(args.width, args.height, args.scale)
    with ExitStack() as stack:
        runs = [stack.enter_context(open_run(path)) for path in args.runs]
        fig = style_for_print(build_figure(args, runs), args.template, args.font_size)
        width, height = default_size(fig, args.figure)
        width, height = args.width or width, args.height or height
        check_png_size(width, height, args.scale)
        try:
            path = write_png(fig, args.out, width=width, height=height, scale=args.scale)
        finally:
            stop_renderer()  # close Chrome now, while the process can still tidy up after it
    print(path)
    return 0


def build_figure(args, runs):
    """The figure the arguments ask for."""
    if args.figure == "spp":
        step = 0 if args.step is None else args.step
        return figures.signal_propagation(runs, args.stat, layers=args.spp_layers, step=step)
    if args.figure == "widths":
        stat = args.stat or figures.DEFAULT_WIDTH_STAT
        return figures.width_check(runs, stat, step=args.step)
    selection = {"types": args.types, "pattern": args.pattern}
    stat = args.stat or DEFAULT_STAT
    if args.figure == "heatmap":
        return figures.depth_step_heatmap(runs, stat, height=args.height, **selection)
    if args.figure == "flow":
        return figures.flow_curve(
            runs,
            stat,
            step=args.step,
            window=args.window,
            depth_axis=args.depth_axis,
            lines=args.lines,
            **selection,
        )
    if args.figure == "ratio":
        top, bottom = ratio_order(runs, args.numerator)
        return figures.ratio_heatmap(top, bottom, stat, height=args.height, **selection)
    return figures.training_curves(runs, smoothing=args.smoothing)


def ratio_order(runs, numerator: str | None) -> tuple:
    """(numerator, denominator) of the two runs: `numerator` names one of them by file path,
    label (folder/model) or model name; None keeps the order given."""
    if numerator is None:
        return runs[0], runs[1]
    matches = [run for run in runs if numerator in _names_of(run)]
    if len(matches) != 1:
        names = " or ".join(f"{figures.run_label(run)} ({run.path})" for run in runs)
        how = "names both runs" if matches else "is neither run"
        raise UsageError(f"--numerator {numerator} {how}; name one of {names}")
    top = matches[0]
    return top, next(run for run in runs if run is not top)


def _names_of(run) -> set[str]:
    """What --numerator may call a run: its path as given or resolved, label, model, stem."""
    path = Path(run.path)
    names = {run.path, str(path.resolve()), path.stem}
    return names | {figures.run_label(run), figures.run_model(run)}
