"""Starting torchrun ourselves: `gradscope record --nproc-per-node N` on this machine."""

from __future__ import annotations

import logging
import signal
import sys

from gradscope.errors import UsageError
from gradscope.train._distributed import launched_by_torchrun
from gradscope.train._experiment import resume_command

INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT)


def launch_ranks(nproc: int, command: list[str], run_dir) -> int:
    """Run `python -m gradscope COMMAND...` as `nproc` ranks under torchrun's agent (in this
    process, standalone rendezvous on localhost); returns the exit code for the shell.

    Ctrl-C or SIGTERM reaches the agent, which forwards it once to every rank: they finish the
    step, checkpoint and stop (the agent kills them if that takes over 30 s); the exit code is
    then INTERRUPTED. A rank that dies makes
    the agent stop the others at once; this says which rank and how, and the command that
    continues the experiment in `run_dir`.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise UsageError(f"--nproc-per-node must be a positive integer, got {nproc!r}")
    if launched_by_torchrun():
        raise UsageError("already running under torchrun: drop --nproc-per-node")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "gradscope", *command]
    )
    quiet = ("torch.distributed.elastic", "torch.distributed.run")
    for name in [*quiet, *logging.root.manager.loggerDict]:
        if name.startswith(quiet):  # the agent's logs: what failed is said below
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(args)
    except SignalException as e:
        stopped = e.sigval in (signal.SIGINT, signal.SIGTERM)
        return INTERRUPTED if stopped else 128 + int(e.sigval)
    except ChildFailedError as e:
        return _report_failure(*e.get_first_failure(), resume_command(run_dir, nproc))
    return 0


def _report_failure(rank: int, failure, resume: str) -> int:
    """Say which rank failed first and how (torchrun then stopped the others); returns the exit
    code for the shell. A rank's usage error or Ctrl-C was printed by the rank itself."""
    if failure.exitcode in (2, INTERRUPTED):
        return failure.exitcode
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with code {failure.exitcode}"
    print(
        f"gradscope record: error: rank {rank} {how}; torchrun stopped the other ranks "
        f"(continue from the last checkpoint with `{resume}`)",
        file=sys.stderr,
    )
    return failure.exitcode if failure.exitcode > 0 else 1
