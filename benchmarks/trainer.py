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
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gradscope.data import load_dataset, resolve_device
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
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return parser


class BareLoop:
    """The reference: forward, loss, backward, SGD step on one preloaded batch."""

    def __init__(self, model_name, batch_size, image_size, num_classes, config, device, amp):
        torch.manual_seed(config.seed)
        memory_format = torch.channels_last if amp else torch.preserve_format
        self.model = create_model(model_name, num_classes=num_classes).to(
            device, memory_format=memory_format
        )
        self.device, self.amp = device, amp
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.x = torch.randn(batch_size, 3, *image_size).to(device, memory_format=memory_format)
        self.y = torch.randint(0, num_classes, (batch_size,)).to(device)

    def run(self, steps: int) -> None:
        """Train `steps` steps."""
        for _ in range(steps):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = F.cross_entropy(self.model(self.x), self.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss.item()  # the trainer reads its loss once per step too


def main(args) -> None:
    """Alternate trainer and bare steps; print images/s of each and their ratio."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dataset = load_dataset(args.data, device=device)
    total = args.warmup + args.rounds
    config = TrainConfig(
        data=args.data,
        steps=total + 1,
        batch_size=args.batch_size,
        record=False,
        eval_every=10 * total,  # evaluation is not training throughput
        checkpoint_every=10 * total,
        device=str(device),
    )
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(args.model, config, dataset, run_dir, progress=False)
        bare = BareLoop(
            args.model,
            args.batch_size,
            dataset.image_size,
            dataset.num_classes,
            config,
            device,
            trainer.amp,
        )
        trainer.run(stop_at_step=args.warmup, save_on_pause=False)
        bare.run(args.warmup)
        trainer_rates, bare_rates = [], []
        for _ in range(args.rounds):
            start = _now(device)
            trainer.run(stop_at_step=trainer.step + 1, save_on_pause=False)
            trainer_rates.append(args.batch_size / (_now(device) - start))
            start = _now(device)
            bare.run(1)
            bare_rates.append(args.batch_size / (_now(device) - start))
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
    if args.json:
        figures = {
            "model": args.model,
            "batch_size": args.batch_size,
            "device": str(device),
            "trainer_images_per_s": statistics.median(trainer_rates),
            "bare_images_per_s": statistics.median(bare_rates),
            "ratio": statistics.median(ratios),
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


def _now(device: torch.device) -> float:
    """perf_counter after the device finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


if __name__ == "__main__":
    main(get_args_parser().parse_args())
