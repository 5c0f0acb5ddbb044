"""`gradscope inspect RUN.h5 [--json]`: a run's summary, latest record, metrics and diagnosis."""

import json
import sys

import pandas as pd

from gradscope.diagnosis import diagnose
from gradscope.store import Run, open_run


def register(subparsers) -> None:
    """Add the `inspect` subcommand."""
    parser = subparsers.add_parser(
        "inspect", help="summarise a run file", description="Summarise a gradscope run file."
    )
    parser.add_argument("run", metavar="RUN.h5", help="path of the run file")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    parser.set_defaults(func=inspect_command)


def inspect_command(args) -> int:
    """Open the run named on the command line and print its report."""
    with open_run(args.run) as run:
        if args.json:
            json.dump(report_dict(run), sys.stdout, indent=2)
            print()
        else:
            print_report(run, sys.stdout)
    return 0


def print_report(run: Run, out) -> None:
    """Print every section of the report on `out`."""
    sections = (
        summary_text(run),
        latest_record_text(run),
        latest_metrics_text(run),
        diagnose(run).to_text(),
    )
    for section in sections:
        print(section, file=out)
        print(file=out)


def report_dict(run: Run) -> dict:
    """The report as strict-JSON data: summary, latest record, latest metrics, diagnosis."""
    table = latest_record_table(run)
    latest = run.latest_metrics()
    return {
        "path": str(run.path),
        "attrs": run.attrs,
        "state": run_state(run),
        "layers": run.layers.to_dict(orient="records"),
        "stats": list(run.stats),
        "records": len(run.steps),
        "first_step": int(run.steps[0]) if len(run.steps) else None,
        "last_step": int(run.steps[-1]) if len(run.steps) else None,
        "latest_record": None if table is None else _json_table(table.reset_index()),
        "latest_metrics": _json_table(latest.reset_index()) if not latest.empty else [],
        "diagnosis": diagnose(run).to_dict(),
    }


def _json_table(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with non-finite floats written as strings, so the output is strict JSON."""
    rows = json.loads(frame.to_json(orient="records", double_precision=15))
    for row, (_, original) in zip(rows, frame.iterrows(), strict=True):
        for key, value in original.items():
            if (
                isinstance(value, float)
                and value != value
                or value in (float("inf"), -float("inf"))
            ):
                row[key] = str(value)
    return rows


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
