"""Training: the loop and its config, checkpoints, resume, the paired experiment (`record`),
and torchrun ranks."""

from gradscope.train._config import (
    TrainConfig,
    TrainPlan,
    check_train_config,
    plan_steps,
    resolve_device,
)
from gradscope.train._distributed import (
    PeerFailed,
    Ranks,
    current_ranks,
    launched_by_torchrun,
    process_rank,
)
from gradscope.train._experiment import (
    ExperimentConfig,
    ExperimentResult,
    check_experiment,
    check_resume,
    experiment_name,
    read_config,
    resume_command,
    resume_experiment,
    run_experiment,
)
from gradscope.train._interrupt import DeferredInterrupt, sigterm_as_ctrl_c
from gradscope.train._launch import INTERRUPTED, launch_ranks
from gradscope.train._trainer import Trainer, TrainResult, finished_result

__all__ = [
    "DeferredInterrupt",
    "ExperimentConfig",
    "ExperimentResult",
    "PeerFailed",
    "Ranks",
    "TrainConfig",
    "TrainPlan",
    "TrainResult",
    "Trainer",
    "check_experiment",
    "check_resume",
    "current_ranks",
    "check_train_config",
    "experiment_name",
    "finished_result",
    "INTERRUPTED",
    "launch_ranks",
    "launched_by_torchrun",
    "plan_steps",
    "process_rank",
    "read_config",
    "resolve_device",
    "resume_command",
    "resume_experiment",
    "run_experiment",
    "sigterm_as_ctrl_c",
]
