"""Attach gradscope to a torchvision model, train a few steps on random data, read the run back."""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import gradscope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/examples/mobilenet_v3_small.h5", help="run file")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images, labels = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))

    with gradscope.attach(model, args.out, optimizer=opt, every=2, overwrite=True) as rec:
        for _ in range(args.steps):
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()  # a record is taken here on steps 0, 2, 4, ...
            opt.zero_grad()
            rec.log(loss=loss.item())

    run = gradscope.open_run(args.out)
    grad = run.stat("grad_norm")[-1]
    print(f"recorded {len(run.steps)} steps x {len(run.layers)} layers x {len(run.stats)} stats")
    print(
        f"grad_norm at step {run.steps[-1]}: first layer {grad[0]:.3g}, last layer {grad[-1]:.3g}"
    )
    print(f"run file: {Path(args.out).resolve()}")
    print(f"look at it: gradscope inspect {args.out}")


if __name__ == "__main__":
    main()
