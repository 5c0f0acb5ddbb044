"""Paired experiments: train a model and its baselines on the same data, recording each."""

import dataclasses
import json
import math
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from gradscope.data import TrainBatches, load_dataset
from gradscope.errors import UsageError
from gradscope.models import get_model_spec
from gradscope.store import open_run
from gradscope.train._checkpoint import checkpoint_path
from gradscope.train._config import TrainConfig, check_train_config, plan_steps, resolve_device
from gradscope.train._trainer import Trainer, TrainResult, finished_result

CONFIG_FILE = "config.json"  # the experiment's full configuration, inside its folder


@dataclass
class ExperimentConfig:
    """A paired experiment: which models, where its folder goes, and the shared training recipe."""

    model: str  # the model under study, e.g. "resnet56"
    baselines: list[str] = field(default_factory=list)  # trained alike, e.g. ["plain56"]
    out: str = "runs"  # parent folder of experiment folders
    name: str | None = None  # experiment folder name (None: a timestamp, YYYYmmdd-HHMMSS)
    train: TrainConfig = field(default_factory=TrainConfig)  # recipe shared by every model

    @property
    def models(self) -> list[str]:
        """The model, then its baselines: the order in which they train."""
        return [self.model, *self.baselines]


@dataclass
class ExperimentResult:
    """What an experiment session produced: its folder and one TrainResult per model."""

    run_dir: Path  # the experiment folder (run files, checkpoints, config.json)
    config: ExperimentConfig  # the configuration the models trained with
    results: list[TrainResult]  # one per model, in training order

    @property
    def finished(self) -> bool:
        """True when every model has trained to the end."""
        return all(r.finished for r in self.results)


def run_experiment(config: ExperimentConfig, *, progress=True, stop_at_step=None):
    """Train the model and each baseline with the same init seed and batch order.

    Writes `OUT/NAME/<model>.h5` per model, `config.json` and checkpoints. Every input is
    checked before the folder is created. `stop_at_step` pauses each model at that step
    (continue with `resume_experiment`). Returns an ExperimentResult.
    """
    check_experiment(config)
    config = dataclasses.replace(config, name=config.name or _timestamp())
    run_dir = Path(config.out) / config.name
    if run_dir.exists():
        raise UsageError(
            f"{run_dir} already exists; choose another --name, or continue it with "
            f"--resume {run_dir}"
        )
    _check_writable(Path(config.out))
    dataset = _load_checked_data(config.train)
    run_dir.mkdir(parents=True)
    _write_config(run_dir, config)
    return _train_models(config, run_dir, dataset, progress, stop_at_step)


def resume_experiment(run_dir, *, device=None, progress=True, stop_at_step=None):
    """Continue every unfinished model of `run_dir` from its checkpoint, appending to its run file.

    The configuration comes from `run_dir/config.json`; `device` may override where it runs.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if device is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=device))
    if not any(checkpoint_path(run_dir, name).is_file() for name in config.models):
        raise UsageError(
            f"{run_dir} holds no checkpoint ({', '.join(config.models)}.ckpt.pt); nothing to "
            f"resume: start a new run without --resume"
        )
    check_experiment(config)
    dataset = _load_checked_data(config.train)
    return _train_models(config, run_dir, dataset, progress, stop_at_step, resume=True)


def check_experiment(config: ExperimentConfig) -> None:
    """Raise UsageError on unknown or repeated model names, bad names or a bad recipe."""
    for name in config.models:
        get_model_spec(name)  # raises with the list of valid names
    repeated = sorted({n for n in config.models if config.models.count(n) > 1})
    if repeated:
        raise UsageError(f"model {repeated[0]!r} is given twice; each model trains once")
    if config.name is not None and (
        not config.name or config.name in (".", "..") or any(s in config.name for s in "/\\")
    ):
        raise UsageError(f"--name {config.name!r} must be a plain folder name (no slashes)")
    check_train_config(config.train)


def read_config(run_dir) -> ExperimentConfig:
    """The ExperimentConfig saved in `run_dir/config.json`."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(
            f"{run_dir} is not an experiment folder (no {CONFIG_FILE}); give the folder "
            "`gradscope record` created, e.g. runs/NAME"
        )
    try:
        saved = json.loads(path.read_text())
        train = TrainConfig(**saved.pop("train"))
        return ExperimentConfig(
            model=saved["model"],
            baselines=saved["baselines"],
            out=saved["out"],
            name=saved["name"],
            train=train,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is not a configuration this gradscope can read ({e})") from e


def _write_config(run_dir: Path, config: ExperimentConfig) -> None:
    """Save the full configuration, so `--resume` needs no flags repeated."""
    from gradscope import __version__

    saved = dataclasses.asdict(config)
    saved["created"] = datetime.now().astimezone().isoformat(timespec="seconds")
    saved["gradscope_version"] = __version__
    (run_dir / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")


def _train_models(config, run_dir, dataset, progress, stop_at_step, resume=False):
    """Train each model in turn; a finished one (per its checkpoint) is only reported."""
    attrs = {
        "experiment": config.name,
        "data": dataset.name,
        "synthetic": bool(dataset.synthetic),
        "seed": config.train.seed,
        "models": ",".join(config.models),
    }
    results = []
    for name in config.models:
        done = finished_result(name, config.train, run_dir, dataset) if resume else None
        if done is not None:
            results.append(done)
            continue
        trainer = None
        try:
            trainer = Trainer(
                name,
                config.train,
                dataset,
                run_dir,
                resume=resume,
                attrs={**attrs, "model": name},
                progress=progress,
            )
            with trainer:
                results.append(trainer.run(stop_at_step))
        except KeyboardInterrupt:
            step = trainer.checkpoint_step if trainer is not None else None
            where = f"{name} checkpointed at step {step}" if step is not None else name
            print(
                f"\ninterrupted ({where}); resume with:\n  gradscope record --resume {run_dir}",
                file=sys.stderr,
            )
            raise
    return ExperimentResult(run_dir=run_dir, config=config, results=results)


def _load_checked_data(train: TrainConfig):
    """Load the dataset onto the run's device and check the recipe fits it."""
    device = resolve_device(train.device)
    dataset = load_dataset(
        train.data, root=train.data_root, device=device, image_size=train.image_size
    )
    plan_steps(train, TrainBatches(dataset, batch_size=train.batch_size).steps_per_epoch)
    return dataset


def _check_writable(out: Path) -> None:
    """Raise UsageError unless experiment folders can be created under `out`."""
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, not a folder; pick another --out")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write in {existing} ({e.strerror})") from e


def _timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


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
