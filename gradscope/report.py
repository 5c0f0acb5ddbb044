"""What gradscope prints: `inspect`'s report of a run, and `record`'s closing summary."""

from __future__ import annotations

import math
import shlex
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from gradscope._json import json_records
from gradscope.diagnosis import diagnose
from gradscope.store import PROBE_ATTR, Run, open_run, probe_summary

if TYPE_CHECKING:  # the training side imports torch; `inspect` must not
    from gradscope.train import ExperimentResult, TrainResult


def print_report(run: Run, out) -> None:
    """Print every section of the report on `out`: where a non-finite value first appeared
    (when the flight recorder found one) comes first."""
    origins = nonfinite_text(run)
    sections = (
        *([origins] if origins else []),
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
        "write_error": run.write_error,
        "dropped_records": run.dropped_records,
        "dropped_metrics": run.dropped_metrics,
        "layers": run.layers.to_dict(orient="records"),
        "stats": list(run.stats),
        "records": len(run.steps),
        "first_step": int(run.steps[0]) if len(run.steps) else None,
        "last_step": int(run.steps[-1]) if len(run.steps) else None,
        "latest_record": None if table is None else json_records(table.reset_index()),
        "latest_metrics": json_records(latest.reset_index()) if not latest.empty else [],
        "nonfinite": nonfinite_counts(run),
        "events": json_records(run.events),
        "diagnosis": diagnose(run).to_dict(),
    }


def nonfinite_counts(run: Run) -> dict:
    """How often the flight recorder acted: origins stored (steps where a non-finite value
    reached an update), updates skipped by nonfinite="skip", and updates the AMP GradScaler
    skipped for an overflow (expected under AMP: counted, never an origin)."""
    events = run.events
    origins = events[events["kind"] == "nonfinite"]
    return {
        "origins": len(origins),
        "updates_skipped": int((origins["update"] == "skipped").sum()),
        "amp_overflows_skipped": int((events["kind"] == "amp_overflow").sum()),
    }


def nonfinite_text(run: Run) -> str | None:
    """The stored origins of non-finite values, one sentence each (None when there are none)."""
    events = run.events
    origins = events[events["kind"] == "nonfinite"]
    if origins.empty:
        return None
    lines = [f"non-finite values ({len(origins)} step{'s' if len(origins) > 1 else ''}):"]
    for _, row in origins.iterrows():
        what = _UPDATE_WORDS[row["update"]]
        recorded = "; recorded in full" if row["recorded"] else ""
        lines.append(f"  {row['message']} [{what}{recorded}]")
    return "\n".join(lines)


_UPDATE_WORDS = {
    "applied": "the update ran",
    "skipped": "the update was skipped",
    "raised": "NonFiniteError raised before the update",
}


def run_state(run: Run) -> str:
    """'live', 'closed' (finished cleanly), 'ended by a write error: ...' or 'stopped' (writer
    gone without closing the file)."""
    error = run.write_error
    if error:
        return f"ended by a write error: {error} (the records written before are all here)"
    if run.closed:
        return "closed"
    return "live" if run.is_live else "stopped (the writer ended without closing the file)"


def dropped_text(run: Run) -> str | None:
    """What the writer dropped because the disk fell behind, or None if nothing."""
    records, metrics = run.dropped_records, run.dropped_metrics
    if not records and not metrics:
        return None
    return (
        f"{records:,} records and {metrics:,} metric values dropped (the disk fell behind "
        "the training; the steps of the records kept say which)"
    )


def summary_text(run: Run) -> str:
    """Run identity, state, size and step range."""
    attrs = run.attrs
    steps = run.steps
    step_range = f"{len(steps)} records" + (
        f", steps {steps[0]}..{steps[-1]}" if len(steps) else ""
    )
    lines = [
        f"run:       {run.path}",
        f"model:     {_model_text(attrs)}",
        f"created:   {attrs.get('created', '?')}",
        f"versions:  gradscope {attrs.get('gradscope_version', '?')}, "
        f"torch {attrs.get('torch_version', '?')}",
        f"state:     {run_state(run)}",
        f"layers:    {len(run.layers)}, {int(run.layers['params'].sum()):,} parameters",
        f"stats:     {', '.join(run.stats)}",
        f"records:   {step_range}",
    ]
    nonfinite = (attrs.get("attach_args") or {}).get("nonfinite")
    counts = nonfinite_counts(run)
    if nonfinite is not None or any(counts.values()):
        mode = f"{nonfinite}; " if nonfinite else ""
        lines.append(
            f"nonfinite: {mode}origins stored: {counts['origins']}, updates skipped by "
            f'nonfinite="skip": {counts["updates_skipped"]}, AMP overflows skipped by the '
            f"GradScaler: {counts['amp_overflows_skipped']}"
        )
    dropped = dropped_text(run)
    if dropped:
        lines.append(f"dropped:   {dropped}")
    extras = {k: v for k, v in attrs.items() if k not in _SHOWN_ATTRS}
    if isinstance(extras.get(PROBE_ATTR), dict):  # a probe file: its description, in words
        extras[PROBE_ATTR] = probe_summary(extras[PROBE_ATTR])
    lines += [f"{key + ':':<10} {value}" for key, value in sorted(extras.items())]
    return "\n".join(lines)


def _model_text(attrs: dict) -> str:
    """The recorded model name and its class ("resnet56 (CifarResNet)"), whichever exist."""
    model, cls = attrs.get("model"), attrs.get("model_class")
    if model and cls and model != cls:
        return f"{model} ({cls})"
    return str(model or cls or "(not recorded)")


_SHOWN_ATTRS = {
    "model",
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


def flow_summary(run_path) -> str:
    """One line on gradient flow in a run file: first/last layer gradient norms, early vs late."""
    with open_run(run_path) as run:
        steps = run.steps
        if len(steps) == 0:
            return "no gradient-flow records yet"
        act = run.stat("act_grad_norm") if "act_grad_norm" in run.stats else None
        grad = run.stat("grad_norm") if "grad_norm" in run.stats else None
    parts = []
    if act is not None and np.isfinite(act).any():
        layers = np.flatnonzero(np.isfinite(act).any(axis=0))
        first, last = layers[0], layers[-1]
        early = f"{act[0, first]:.1e}/{act[0, last]:.1e} at step {steps[0]}"
        late = f" -> {act[-1, first]:.1e}/{act[-1, last]:.1e} at step {steps[-1]}"
        parts.append(f"act_grad_norm first/last layer {early}{late if len(steps) > 1 else ''}")
    if grad is not None and np.isfinite(grad).any():
        early, late = f"{np.nanmedian(grad[0]):.1e}", f" -> {np.nanmedian(grad[-1]):.1e}"
        parts.append(f"grad_norm median {early}{late if len(steps) > 1 else ''}")
    return "; ".join(parts) or "no finite gradient statistics recorded"


def recording_notes(run_path) -> list[str]:
    """Sentences on what went wrong while recording a run file: a write error, drops."""
    with open_run(run_path) as run:
        notes = [f"recording {run_state(run)}"] if run.write_error else []
        dropped = dropped_text(run)
    return notes + ([dropped] if dropped else [])


def format_summary(result: ExperimentResult) -> str:
    """The closing text: a table row per model, its gradient-flow line, then what to run next."""

    def percent(value):
        return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"

    header = (
        f"{'model':<14} {'steps':>13} {'train loss':>10} {'train err':>9} {'test err':>8} "
        f"{'test images':>16} {'train img/s':>11}"
    )
    lines = [header]
    for r in result.results:
        steps = f"{r.steps_done}/{r.total_steps}"
        loss = "-" if math.isnan(r.train_loss) else f"{r.train_loss:.4f}"
        speed = "-" if r.images_per_second is None else f"{r.images_per_second:.1f}"
        lines.append(
            f"{r.model:<14} {steps:>13} {loss:>10} {percent(r.train_error):>9} "
            f"{percent(r.test_error):>8} {_test_images(r):>16} {speed:>11}"
        )
    lines.append(
        "train loss, train err: means over the last 100 steps or fewer; test err: the latest "
        "evaluation; train img/s: training steps only, evaluation excluded"
    )
    lines.append("")
    for r in result.results:
        if r.run_path is not None and r.run_path.is_file():
            lines.append(f"{r.model}: {flow_summary(r.run_path)}")
            lines.extend(f"{r.model}: {note}" for note in recording_notes(r.run_path))
    lines.append("")
    lines.extend(next_commands(result))
    return "\n".join(lines)


def _test_images(result: TrainResult) -> str:
    """How much of the test set the latest evaluation used: "all 10,000" or "subset 2,000"."""
    if result.test_images is None:
        return "-"
    if result.test_images == result.test_set_size:
        return f"all {result.test_images:,}"
    return f"subset {result.test_images:,}"


def next_commands(result: ExperimentResult) -> list[str]:
    """The commands to look at the experiment: resume if unfinished, dashboard, heatmap export."""
    run_dir = shlex.quote(str(result.run_dir))
    if not result.finished:
        return ["continue training:", f"  gradscope record --resume {run_dir}"]
    if not result.config.train.record:
        return [f"files in {run_dir} (trained without recording)"]
    runs = " ".join(shlex.quote(str(r.run_path)) for r in result.results)
    heatmap = shlex.quote(str(result.run_dir / "heatmap.png"))
    return [
        "next:",
        f"  gradscope dashboard --runs {run_dir}",
        f"  gradscope export {runs} --figure heatmap --out {heatmap}",
    ]
