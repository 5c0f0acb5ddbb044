"""`gradscope record`: train a model and its baselines, recording gradient flow into run files."""

import argparse
import contextlib
import dataclasses
import sys
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from gradscope.errors import RunFileWarning, UsageError
from gradscope.models import SHORTCUTS
from gradscope.report import format_summary
from gradscope.train import (
    INTERRUPTED,
    ExperimentConfig,
    PeerFailed,
    TrainConfig,
    check_experiment,
    check_resume,
    experiment_name,
    launch_ranks,
    process_rank,
    resume_experiment,
    run_experiment,
    sigterm_as_ctrl_c,
)

# flags `--resume` accepts besides itself: everything else comes from the saved config.json
RESUME_FLAGS = ("resume", "device", "quiet", "nproc_per_node", "command", "func", "argv")


def register(subparsers) -> None:
    """Add the `record` subcommand."""
    parser = subparsers.add_parser(
        "record",
        help="train a model and baselines, recording gradient flow",
        description="Train MODEL and each BASELINE with the same initialization seed and batch "
        "order (He et al. 2016 CIFAR recipe unless told otherwise), writing OUT/NAME/<model>.h5, "
        "config.json and checkpoints. Ctrl-C or SIGTERM checkpoints; --resume OUT/NAME continues. "
        "Under torchrun (or with --nproc-per-node N) the ranks share each global batch (DDP).",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `gradscope record`; defaults come from TrainConfig / ExperimentConfig."""
    d = TrainConfig()
    what = parser.add_argument_group("models and data")
    what.add_argument("--model", help="the model under study, e.g. resnet56")
    what.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="MODEL",
        help="a model trained alongside (repeatable), e.g. plain56",
    )
    what.add_argument(
        "--data",
        default=d.data,
        help="cifar10, cifar100, synthetic, or a folder (cifar-10-batches-py, or an ImageFolder "
        "tree with train/ and test/ or val/) (default: %(default)s)",
    )
    what.add_argument(
        "--data-root", default=None, metavar="DIR", help="download folder for cifar10/cifar100"
    )
    what.add_argument(
        "--image-size", type=int, default=None, metavar="N", help="resize images to N x N"
    )
    what.add_argument(
        "--shortcut",
        choices=SHORTCUTS,
        default=d.shortcut,
        help="CIFAR ResNet shortcut: A zero-pad (paper), B projection (default: %(default)s)",
    )

    length = parser.add_argument_group("run length and recipe")
    steps_or_epochs = length.add_mutually_exclusive_group()
    steps_or_epochs.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="optimizer steps (default: 64000, the paper's)",
    )
    steps_or_epochs.add_argument(
        "--epochs", type=int, default=None, metavar="N", help="passes over train set"
    )
    length.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: 128)")
    length.add_argument("--lr", type=float, default=d.lr, help="initial lr (default: 0.1)")
    length.add_argument("--momentum", type=float, default=d.momentum, help="(default: 0.9)")
    length.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help="(default: 1e-4)"
    )
    length.add_argument(
        "--warmup-steps", type=int, default=d.warmup_steps, help="linear lr warmup (default: 0)"
    )
    length.add_argument(
        "--eval-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="steps between test evaluations (default: every epoch; ~10 per --steps run)",
    )
    length.add_argument(
        "--eval-subset",
        type=_eval_subset,
        default=d.eval_subset,
        metavar="N|all",
        help="test images of intermediate evaluations: every k-th image, the same ones each "
        "time; the last evaluation always uses the whole test set (default: %(default)s)",
    )
    length.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")

    rec = parser.add_argument_group("recording and output")
    rec.add_argument(
        "--every",
        type=int,
        default=d.record_every,
        metavar="N",
        help="steps between records (default: 10)",
    )
    rec.add_argument("--no-record", action="store_true", help="train without recording")
    rec.add_argument("--out", default="runs", help="parent folder (default: %(default)s)")
    rec.add_argument("--name", default=None, help="experiment folder (default: a timestamp)")
    rec.add_argument(
        "--resume", default=None, metavar="OUT/NAME", help="continue an interrupted experiment"
    )
    rec.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (a bar on a terminal, else a line every $GRADSCOPE_PROGRESS_SECONDS, 30)",
    )

    dev = parser.add_argument_group("device")
    dev.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    dev.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast + channels_last (default: on for CUDA only)",
    )
    dev.add_argument("--compile", action="store_true", help="torch.compile the forward")

    ranks = parser.add_argument_group("several processes (DDP)")
    ranks.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        metavar="N",
        help="start torchrun with N ranks on this machine, each training on its slice of every "
        "global batch (--batch-size stays the global batch); or launch with "
        "`torchrun --nproc-per-node N -m gradscope record ...`",
    )
    ranks.add_argument(
        "--sync-bn",
        action="store_true",
        help="SyncBatchNorm: batch statistics over all ranks (CUDA only; without it each rank "
        "normalizes its own slice)",
    )


def _eval_subset(text: str) -> int | None:
    """--eval-subset: a positive number of images, or "all" (None: the whole test set)."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of images or 'all', got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of images, got {value}")
    return value


def config_from_args(args) -> ExperimentConfig:
    """The ExperimentConfig the flags describe."""
    if args.model is None:
        raise UsageError("give --model NAME (see `gradscope models`), or --resume OUT/NAME")
    train = TrainConfig(
        data=args.data,
        data_root=args.data_root,
        image_size=args.image_size,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        eval_every=args.eval_every,
        eval_subset=args.eval_subset,
        record=not args.no_record,
        record_every=args.every,
        seed=args.seed,
        shortcut=args.shortcut,
        device=args.device or "auto",
        amp=args.amp,
        compile=args.compile,
        sync_bn=args.sync_bn,
    )
    return ExperimentConfig(
        model=args.model, baselines=list(args.baseline), out=args.out, name=args.name, train=train
    )


def _check_resume_flags(args, parser_defaults: dict) -> None:
    """With --resume, the saved config decides; other flags would be silently ignored."""
    given = [
        key
        for key, value in vars(args).items()
        if key not in RESUME_FLAGS and value != parser_defaults.get(key)
    ]
    if given:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise UsageError(
            f"--resume reads the configuration from its config.json; drop {flags} "
            "(only --device and --quiet may change)"
        )


def run(args) -> int:
    """Run (or resume) the experiment and print its summary (rank 0 under torchrun).

    SIGTERM (a scheduler's stop) is Ctrl-C: while a model trains, every rank finishes the
    step, checkpoints and prints how to resume (exit code INTERRUPTED)."""
    with sigterm_as_ctrl_c(), _run_file_warnings_printed():
        return _run(args)


@contextlib.contextmanager
def _run_file_warnings_printed():
    """A RunFileWarning (writing a run file failed, records dropped) as one line on stderr,
    above the progress bar if there is one; training goes on."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RunFileWarning):
            tqdm.write(f"gradscope record: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _run(args) -> int:
    if args.resume is not None:
        _check_resume_flags(args, _defaults())
    if args.nproc_per_node is not None:
        return _launch(args)
    is_main = process_rank() == 0  # under torchrun, rank 0 prints; the others only errors
    progress = not args.quiet
    try:
        if args.resume is not None:
            result = resume_experiment(args.resume, device=args.device, progress=progress)
        else:
            result = run_experiment(config_from_args(args), progress=progress)
    except PeerFailed:
        return 2  # the rank that failed printed why
    except KeyboardInterrupt:
        if not is_main:
            return INTERRUPTED  # rank 0 prints how to resume
        raise
    if is_main:
        print(format_summary(result))
    return 0


def _launch(args) -> int:
    """Check what can be checked here, then start torchrun with the same flags (but this one)."""
    world = args.nproc_per_node
    command = ["record", *_without_nproc(args.argv[1:])]
    if args.resume is not None:
        check_resume(args.resume, world, device=args.device)
        run_dir = Path(args.resume)
    else:
        config = config_from_args(args)
        train = dataclasses.replace(config.train, world_size=world)
        check_experiment(dataclasses.replace(config, train=train))
        if config.name is None:  # named here, so a failure can say which folder to resume
            config = dataclasses.replace(config, name=experiment_name())
            command += ["--name", config.name]
        run_dir = Path(config.out) / config.name
    return launch_ranks(world, command, run_dir)


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line without --nproc-per-node and its value."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc-per-node":
            skip = True
        elif not item.startswith("--nproc-per-node="):
            kept.append(item)
    return kept


def _defaults() -> dict:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args([]))
