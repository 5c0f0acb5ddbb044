"""Training: the loop and its config, checkpoints, resume, and the paired experiment (`record`)."""

from gradscope.train._config import (
    TrainConfig,
    TrainPlan,
    check_train_config,
    plan_steps,
    resolve_device,
)
from gradscope.train._experiment import (
    ExperimentConfig,
    ExperimentResult,
    check_experiment,
    read_config,
    resume_experiment,
    run_experiment,
)
from gradscope.train._trainer import Trainer, TrainResult, finished_result

__all__ = [
    "ExperimentConfig",
    "ExperimentResult",
    "TrainConfig",
    "TrainPlan",
    "TrainResult",
    "Trainer",
    "check_experiment",
    "check_train_config",
    "finished_result",
    "plan_steps",
    "read_config",
    "resolve_device",
    "resume_experiment",
    "run_experiment",
]
