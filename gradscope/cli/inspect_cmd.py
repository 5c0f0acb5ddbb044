"""`gradscope inspect RUN.h5`: print a run's summary, layers, latest record and latest metrics."""

import sys

import pandas as pd

from gradscope.store import Run, open_run


def register(subparsers) -> None:
    """Add the `inspect` subcommand."""
    parser = subparsers.add_parser(
        "inspect", help="summarise a run file", description="Summarise a gradscope run file."
    )
    parser.add_argument("run", metavar="RUN.h5", help="path of the run file")
    parser.set_defaults(func=inspect_command)


def inspect_command(args) -> int:
    """Open the run named on the command line and print its report."""
    with open_run(args.run) as run:
        print_report(run, sys.stdout)
    return 0


def print_report(run: Run, out) -> None:
    """Print every section of the report on `out`."""
    for section in (summary_text(run), latest_record_text(run), latest_metrics_text(run)):
        print(section, file=out)
        print(file=out)


def run_state(run: Run) -> str:
    """'live', 'closed' (finished cleanly) or 'stopped' (writer gone without closing the file)."""
    if run.closed:
        return "closed"
    return "live" if run.is_live else "stopped (the writer ended without closing the file)"


def summary_text(run: Run) -> str:
    """Run identity, state, size and step range."""
    attrs = run.attrs
    steps = run.steps
    step_range = f"{len(steps)} records" + (
        f", steps {steps[0]}..{steps[-1]}" if len(steps) else ""
    )
    lines = [
        f"run:       {run.path}",
        f"model:     {attrs.get('model_class', '(not recorded)')}",
        f"created:   {attrs.get('created', '?')}",
        f"versions:  gradscope {attrs.get('gradscope_version', '?')}, "
        f"torch {attrs.get('torch_version', '?')}",
        f"state:     {run_state(run)}",
        f"layers:    {len(run.layers)}, {int(run.layers['params'].sum()):,} parameters",
        f"stats:     {', '.join(run.stats)}",
        f"records:   {step_range}",
    ]
    extras = {k: v for k, v in attrs.items() if k not in _SHOWN_ATTRS}
    lines += [f"{key + ':':<10} {value}" for key, value in sorted(extras.items())]
    return "\n".join(lines)


_SHOWN_ATTRS = {
    "model_class",
    "created",
    "gradscope_version",
    "torch_version",
    "format",
    "format_version",
    "writer_host",
    "writer_pid",
}


def latest_record_table(run: Run) -> pd.DataFrame | None:
    """The latest record: one row per layer (type, params, then each stat), or None if empty."""
    if len(run.steps) == 0:
        return None
    record = run.record_frame()
    layers = run.layers.set_index("name")[["type", "params"]]
    layers.index.name = "layer"
    return layers.join(record)


def latest_record_text(run: Run) -> str:
    """The latest record table as text, with every layer shown."""
    table = latest_record_table(run)
    if table is None:
        return "latest record: none yet"
    return f"latest record (step {run.steps[-1]}):\n{table.to_string(float_format='{:.4g}'.format)}"


def latest_metrics_text(run: Run) -> str:
    """The last logged value of each metric, with its step."""
    latest = run.latest_metrics()
    if latest.empty:
        return "metrics: none logged"
    return "latest metrics:\n" + latest.to_string(float_format="{:.6g}".format)
