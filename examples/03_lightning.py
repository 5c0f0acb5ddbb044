"""Example 03: a bundled CIFAR ResNet trained with Lightning, recorded by GradscopeCallback.

The defaults (synthetic images) run in under a minute on a CPU; `--data
../shared/datasets/cifar10-jpg` (or `--data cifar10`) trains on CIFAR-10.
"""

import argparse
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import gradscope
from gradscope.data import load_dataset, normalize
from gradscope.integrations.lightning import GradscopeCallback
from gradscope.models import create_model


class CifarClassifier(L.LightningModule):
    """A bundled CIFAR model, SGD with momentum, logging loss and error."""

    def __init__(self, model: str, num_classes: int, mean, std, lr: float):
        super().__init__()
        self.model = create_model(model, num_classes=num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))  # [0, 1] units
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.lr = lr  # learning rate per step

    def forward(self, images):
        return self.model(normalize(images, self.mean, self.std))  # uint8 [B, 3, H, W] in

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log("loss", loss)  # the names gradscope's training curves plot
        self.log("train_error", (logits.argmax(1) != labels).float().mean())
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.log("test_loss", F.cross_entropy(logits, labels))
        self.log("test_error", (logits.argmax(1) != labels).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)


def get_args_parser() -> argparse.ArgumentParser:
    """The example's few knobs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="a bundled CIFAR model")
    parser.add_argument("--data", default="synthetic", help="synthetic, cifar10 or a folder")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32, help="images per micro-batch")
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--every", type=int, default=2, help="record every N-th step")
    parser.add_argument("--out", default="runs/examples/lightning_resnet20.h5", help="run file")
    return parser


def main(args) -> None:
    """Fit with the callback, then read the run back."""
    torch.manual_seed(0)
    data = load_dataset(args.data)
    train = DataLoader(
        TensorDataset(data.train_images, data.train_labels),
        batch_size=args.batch_size,
        shuffle=True,
    )
    # every k-th test image, 16 micro-batches' worth: test sets are often sorted by class
    stride = max(1, len(data.test_labels) // (16 * args.batch_size))
    test = DataLoader(
        TensorDataset(data.test_images[::stride], data.test_labels[::stride]),
        batch_size=4 * args.batch_size,
    )
    module = CifarClassifier(args.model, len(data.classes), data.mean, data.std, lr=0.05)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        accumulate_grad_batches=args.accumulate,
        # four evaluations, the last at the end (in micro-batches, at most one epoch apart)
        val_check_interval=min(max(1, args.steps * args.accumulate // 4), len(train)),
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GradscopeCallback(args.out, every=args.every, overwrite=True)],
    )
    trainer.fit(module, train, test)

    run = gradscope.open_run(args.out)
    grad = run.stat("grad_norm")[-1]
    last = run.metrics.ffill().iloc[-1]
    print(f"recorded {len(run.steps)} steps x {len(run.layers)} layers x {len(run.stats)} stats")
    print(
        f"grad_norm at step {run.steps[-1]}: first layer {grad[0]:.3g}, last layer {grad[-1]:.3g}"
    )
    print(f"loss {last['loss']:.3f}, test_error {last['test_error']:.3f} at the last step")
    print(f"run file: {Path(args.out).resolve()} (from {run.attrs['framework']})")
    print(f"look at it: gradscope inspect {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
