"""Trainer overhead: images/s of gradscope's Trainer (no recording) against a bare training loop.

    python benchmarks/trainer.py                          # ResNet-56, batch 128, CPU (~2-3 min)
    python benchmarks/trainer.py --rounds 3 --warmup 1    # a quick check that it runs
    python benchmarks/trainer.py --model resnet20 --data ../shared/datasets/cifar10-jpg

The Trainer draws its batches from the dataset on the device (gather, random crop and flip,
normalize), steps the lr scheduler and the progress bookkeeping; the bare loop re-uses one
preloaded random batch. Both train their own copy of the same model with the same SGD settings.
Single steps alternate (trainer, bare, trainer, ...) so drifts in machine speed hit both alike;
the figure of merit is the median over rounds of bare step time / trainer step time, i.e.
trainer images/s divided by bare images/s. Medians keep other processes' bursts out of it.
"""

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from gradscope.data import load_dataset
from gradscope.models import create_model
from gradscope.train import TrainConfig, Trainer


def get_args_parser() -> argparse.ArgumentParser:
    """The benchmark's knobs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56", help="a registered model name")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--data", default="synthetic", help="dataset the trainer draws from")
    parser.add_argument("--rounds", type=int, default=30, help="alternate steps of each loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each loop first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    return parser


class BareLoop:
    """The reference: forward, loss, backward, SGD step on one preloaded batch."""

    def __init__(self, model_name, batch_size, image_size, num_classes, config: TrainConfig):
        torch.manual_seed(config.seed)
        self.model = create_model(model_name, num_classes=num_classes)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.x = torch.randn(batch_size, 3, *image_size)
        self.y = torch.randint(0, num_classes, (batch_size,))

    def run(self, steps: int) -> None:
        """Train `steps` steps."""
        for _ in range(steps):
            loss = F.cross_entropy(self.model(self.x), self.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss.item()  # the trainer reads its loss once per step too


def main(args) -> None:
    """Alternate trainer and bare steps; print images/s of each and their ratio."""
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, device="cpu")
    total = args.warmup + args.rounds
    config = TrainConfig(
        data=args.data,
        steps=total + 1,
        batch_size=args.batch_size,
        record=False,
        eval_every=10 * total,  # evaluation is not training throughput
        checkpoint_every=10 * total,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(args.model, config, dataset, run_dir, progress=False)
        bare = BareLoop(
            args.model, args.batch_size, dataset.image_size, dataset.num_classes, config
        )
        trainer.run(stop_at_step=args.warmup, save_on_pause=False)
        bare.run(args.warmup)
        trainer_rates, bare_rates = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            trainer.run(stop_at_step=trainer.step + 1, save_on_pause=False)
            trainer_rates.append(args.batch_size / (time.perf_counter() - start))
            start = time.perf_counter()
            bare.run(1)
            bare_rates.append(args.batch_size / (time.perf_counter() - start))
        trainer.close()

    ratios = [t / b for t, b in zip(trainer_rates, bare_rates, strict=True)]
    print(
        f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{args.rounds} alternating steps of each"
    )
    print(f"  trainer (no recording): {statistics.median(trainer_rates):8.1f} images/s (median)")
    print(f"  bare loop:              {statistics.median(bare_rates):8.1f} images/s (median)")
    print(
        f"  ratio trainer/bare:     {statistics.median(ratios):8.3f} (median; "
        f"min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
