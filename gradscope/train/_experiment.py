"""Paired experiments: train a model and its baselines on the same data, recording each."""

import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gradscope.data import TrainBatches, load_dataset
from gradscope.errors import UsageError
from gradscope.models import get_model_spec
from gradscope.train._checkpoint import CheckpointError, checkpoint_path
from gradscope.train._config import TrainConfig, check_train_config, plan_steps
from gradscope.train._distributed import Ranks, planned_world, rank_device, training_processes
from gradscope.train._interrupt import DeferredInterrupt
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

    Under torchrun every rank calls it: each trains on its slice of the global batches, rank 0
    writes the folder and prints; an error on any rank stops them all.
    """
    with training_processes(config.train.device) as ranks:
        train = dataclasses.replace(config.train, world_size=ranks.world)
        config = dataclasses.replace(config, train=train)
        check_experiment(config)
        config = dataclasses.replace(config, name=ranks.share(config.name or experiment_name()))
        run_dir = Path(config.out) / config.name

        def prepare():
            if ranks.is_main:
                if run_dir.exists():
                    raise UsageError(
                        f"{run_dir} already exists; choose another --name, or continue it "
                        f"with --resume {run_dir}"
                    )
                _check_writable(Path(config.out))
            return _load_checked_data(config.train, ranks)  # rank 0 first: it fills the cache

        dataset = ranks.main_first(prepare)
        failure = None
        if ranks.is_main:
            try:
                run_dir.mkdir(parents=True)
                _write_config(run_dir, config)
            except OSError as e:
                failure = UsageError(f"cannot create {run_dir} ({e.strerror or e})")
        ranks.agree(failure)
        return _train_models(config, run_dir, dataset, progress, stop_at_step, ranks)


def resume_experiment(run_dir, *, device=None, progress=True, stop_at_step=None):
    """Continue every unfinished model of `run_dir` from its checkpoint, appending to its run file.

    The configuration comes from `run_dir/config.json`; `device` may override where it runs.
    Under torchrun, with as many ranks as the run started with.
    """
    run_dir = Path(run_dir)
    config = check_resume(run_dir, planned_world(), device=device)
    with training_processes(config.train.device) as ranks:
        dataset = ranks.main_first(lambda: _load_checked_data(config.train, ranks))
        return _train_models(config, run_dir, dataset, progress, stop_at_step, ranks, resume=True)


def check_resume(run_dir, world: int = 1, *, device=None) -> ExperimentConfig:
    """The saved configuration of `run_dir` (with `device` if given), checked for resuming on
    `world` processes: UsageError if there is nothing to resume or the rank count differs."""
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
    if world != config.train.world_size:
        raise UsageError(
            f"{run_dir} trained on {_processes(config.train.world_size)}, not {world}; resume "
            f"it on as many ({resume_command(run_dir, config.train.world_size)}), so that "
            "BatchNorm sees the same slices and the numbers continue as an uninterrupted run"
        )
    return config


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


def _train_models(config, run_dir, dataset, progress, stop_at_step, ranks: Ranks, resume=False):
    """Train each model in turn; a finished one (per its checkpoint) is only reported.

    Ctrl-C or SIGTERM from the first model to the last stops every rank after the step in
    progress (or before the next model starts, if it came in a model's last step or between
    two models), checkpointed, with the command that resumes printed.
    """
    attrs = {
        "experiment": config.name,
        "data": dataset.name,
        "synthetic": bool(dataset.synthetic),
        "seed": config.train.seed,
        "models": ",".join(config.models),
    }
    device = rank_device(config.train.device, ranks)
    results = []
    with DeferredInterrupt() as interrupt:
        for name in config.models:
            done = finished_result(name, config.train, run_dir, dataset) if resume else None
            if done is not None:
                results.append(done)
                continue
            trainer = None
            try:
                if ranks.any(interrupt.requested, device):  # every rank stops before it
                    raise KeyboardInterrupt
                trainer = Trainer(
                    name,
                    config.train,
                    dataset,
                    run_dir,
                    resume=resume,
                    attrs={**attrs, "model": name},
                    progress=progress,
                    ranks=ranks,
                )
                with trainer:
                    results.append(trainer.run(stop_at_step))
            except KeyboardInterrupt:
                if ranks.is_main:
                    print(_interrupted(name, trainer, interrupt, run_dir, ranks), file=sys.stderr)
                raise
            except CheckpointError as e:  # rank 0's: torchrun then stops the others
                then = _after_checkpoint_failure(config, run_dir, ranks)
                raise CheckpointError(f"{e}; {then}") from e
    return ExperimentResult(run_dir=run_dir, config=config, results=results)


def _after_checkpoint_failure(config, run_dir, ranks: Ranks) -> str:
    """What to do once a checkpoint could not be written: resume, or start again."""
    if any(checkpoint_path(run_dir, name).is_file() for name in config.models):
        return f"make room, then continue with `{resume_command(run_dir, ranks.world)}`"
    return f"make room, remove {run_dir} and start the run again"


def _interrupted(name, trainer, interrupt, run_dir, ranks: Ranks) -> str:
    """What stopped and where, and the command that continues the experiment."""
    how = "interrupted" if interrupt.signal_name in (None, "SIGINT") else "stopped by SIGTERM"
    if trainer is None:
        where = f"before {name} started"
    elif trainer.checkpoint_step is None:
        where = f"{name}, before its first checkpoint"
    else:
        where = f"{name} checkpointed at step {trainer.checkpoint_step}"
    return f"\n{how} ({where}); resume with:\n  {resume_command(run_dir, ranks.world)}"


def _load_checked_data(train: TrainConfig, ranks: Ranks):
    """Load the dataset onto the rank's device and check the recipe fits it."""
    device = rank_device(train.device, ranks)
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


def resume_command(run_dir, world: int) -> str:
    """The command that continues `run_dir` on `world` processes."""
    ranks = f" --nproc-per-node {world}" if world > 1 else ""
    return f"gradscope record --resume {run_dir}{ranks}"


def _processes(world: int) -> str:
    return "one process" if world == 1 else f"{world} processes (torchrun ranks)"


def experiment_name() -> str:
    """A new experiment's name when --name is not given: the time it starts."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")
