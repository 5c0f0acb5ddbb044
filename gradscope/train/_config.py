"""Training configuration: the recipe's settings, their checks, and the step plan."""

import math
from dataclasses import dataclass

from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR

from gradscope.data import resolve_device
from gradscope.errors import UsageError
from gradscope.models import SHORTCUTS

PAPER_STEPS = 64_000  # He et al.: stop at 64k iterations, lr / 10 at 32k and 48k
MILESTONE_FRACTIONS = (0.5, 0.75)  # lr milestones as fractions of the run (32k/64k, 48k/64k)
EVAL_POINTS = 10  # test evaluations per `--steps` run when no cadence is given


@dataclass
class TrainConfig:
    """Everything that decides a training run except the model's name."""

    data: str = "cifar10"  # "cifar10", "cifar100", "synthetic", or a dataset folder
    data_root: str | None = None  # download / cache folder for named datasets (None: default)
    image_size: int | None = None  # input side in pixels (None: the dataset's own)
    steps: int | None = None  # optimizer steps in all (None with epochs None: the paper's 64k)
    epochs: int | None = None  # passes over the train set; alternative to steps
    batch_size: int = 128  # images per optimizer step
    lr: float = 0.1  # learning rate before the first milestone (per batch of batch_size)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 penalty coefficient applied by SGD, on every parameter
    lr_decay: float = 0.1  # factor applied to the lr at each milestone (50% and 75% of the run)
    warmup_steps: int = 0  # linear warmup: step k < warmup_steps uses lr * (k + 1) / warmup_steps
    eval_every: int | None = None  # steps between test evaluations (None: every epoch)
    checkpoint_every: int | None = None  # steps between checkpoints (None: every epoch)
    record: bool = True  # attach the gradient-flow recorder (False: train only)
    record_every: int = 10  # steps between gradient-flow records
    seed: int = 0  # seeds the model init and the batch order
    shortcut: str = "B"  # CIFAR ResNet shortcut where shapes change: "A" (paper) or "B"
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"
    amp: bool | None = None  # bf16 autocast + channels_last (None: on for CUDA only)
    compile: bool = False  # run the forward through torch.compile
    sync_bn: bool = False  # SyncBatchNorm: batch statistics over all ranks (CUDA only)
    world_size: int = 1  # processes sharing each global batch (torchrun ranks; set by the run)
    eval_batch_size: int = 500  # images per test-evaluation batch
    eval_subset: int | None = 2000  # test images of intermediate evaluations (every k-th image;
    # the same ones every time); the last evaluation uses the whole test set. None: always all


@dataclass(frozen=True)
class TrainPlan:
    """The step counts a TrainConfig resolves to once the dataset size is known."""

    total_steps: int  # optimizer steps in the whole run
    milestones: tuple[int, ...]  # steps at which the lr is multiplied by lr_decay
    steps_per_epoch: int  # optimizer steps per pass over the train set
    eval_every: int  # steps between test evaluations (and one at the end)
    checkpoint_every: int  # steps between checkpoints (and one at the end)


def check_train_config(config: TrainConfig) -> None:
    """Raise UsageError on settings that cannot make a run; say which flag to change."""

    def positive(flag, value):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"--{flag} must be a positive integer, got {value!r}")

    if config.steps is not None and config.epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    for flag in ("steps", "epochs", "batch-size", "eval-every", "checkpoint-every", "every"):
        field = {"every": "record_every"}.get(flag, flag.replace("-", "_"))
        positive(flag, getattr(config, field))
    positive("image-size", config.image_size)
    positive("eval-batch-size", config.eval_batch_size)
    positive("eval-subset", config.eval_subset)
    if not config.lr > 0:
        raise UsageError(f"--lr must be positive, got {config.lr}")
    if not 0 < config.lr_decay <= 1:
        raise UsageError(f"--lr-decay must be in (0, 1], got {config.lr_decay}")
    if config.weight_decay < 0 or not 0 <= config.momentum < 1:
        raise UsageError("--weight-decay must be >= 0 and --momentum in [0, 1)")
    if not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
        raise UsageError(f"--warmup-steps must be 0 or more, got {config.warmup_steps!r}")
    if config.batch_size % config.world_size:
        raise UsageError(
            f"--batch-size {config.batch_size} is the global batch: it must split evenly over "
            f"the {config.world_size} ranks"
        )
    if config.shortcut not in SHORTCUTS:
        raise UsageError(f"--shortcut must be A or B, got {config.shortcut!r}")
    try:
        device = resolve_device(config.device)
    except UsageError as e:  # "device 'x': ..." as the flag that sets it
        raise UsageError(f"--{e}") from None
    if config.sync_bn and device.type == "cpu":
        raise UsageError(
            "--sync-bn: torch's SyncBatchNorm runs on CUDA devices only; on CPU each rank's "
            "BatchNorm normalizes its own slice of the batch (drop --sync-bn)"
        )


def plan_steps(config: TrainConfig, steps_per_epoch: int) -> TrainPlan:
    """Resolve the run length, lr milestones and eval/checkpoint cadence for this dataset."""
    if config.steps is not None:
        total = config.steps
        eval_default = min(steps_per_epoch, math.ceil(total / EVAL_POINTS))
    else:
        total = PAPER_STEPS if config.epochs is None else config.epochs * steps_per_epoch
        eval_default = steps_per_epoch
    if config.warmup_steps >= total:
        raise UsageError(f"--warmup-steps ({config.warmup_steps}) must be below the run's {total}")
    milestones = tuple(sorted({max(1, round(f * total)) for f in MILESTONE_FRACTIONS}))
    return TrainPlan(
        total_steps=total,
        milestones=milestones,
        steps_per_epoch=steps_per_epoch,
        eval_every=config.eval_every or eval_default,
        checkpoint_every=config.checkpoint_every or steps_per_epoch,
    )


def build_lr_scheduler(optimizer, plan: TrainPlan, config: TrainConfig):
    """Step decay at the plan's milestones, after an optional linear warmup; stepped per step."""
    schedulers = []
    if config.warmup_steps > 1:  # one warmup step would be a no-op
        start = 1.0 / config.warmup_steps
        schedulers.append(LinearLR(optimizer, start, total_iters=config.warmup_steps - 1))
    schedulers.append(MultiStepLR(optimizer, list(plan.milestones), gamma=config.lr_decay))
    return ChainedScheduler(schedulers, optimizer=optimizer)
