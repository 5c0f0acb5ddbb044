"""Example 02: a residual net against its plain twin, same init seed and batch order.

The Python-API twin of `gradscope record --model resnet20 --baseline plain20 --data synthetic`.
Defaults run in about a minute on a CPU; `--data cifar10 --steps 64000` is the paper's run.
"""

import argparse

from gradscope.report import format_summary
from gradscope.train import ExperimentConfig, TrainConfig, run_experiment


def get_args_parser() -> argparse.ArgumentParser:
    """The example's few knobs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="the residual net")
    parser.add_argument("--baseline", default="plain20", help="its plain counterpart")
    parser.add_argument("--data", default="synthetic", help="synthetic, cifar10 or a folder")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per model")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between test evals")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--out", default="runs", help="parent folder of the experiment")
    return parser


def main(args) -> None:
    """Train both models, then print the summary and where the files are."""
    train = TrainConfig(
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        record_every=5,
    )
    config = ExperimentConfig(
        model=args.model, baselines=[args.baseline], out=args.out, train=train
    )
    result = run_experiment(config)
    print(format_summary(result))
    print(f"\nfiles: {', '.join(str(r.run_path) for r in result.results)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
