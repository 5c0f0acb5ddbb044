"""A fixed population of examples for the gradient noise scale tests: a small regression net
whose true per-layer |G|^2 and tr(Sigma) come from per-example gradients (torch.func), and
small batches drawn from it with replacement, so each is an iid sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POPULATION = 512  # examples
LAYERS = ("0", "2")  # the net's parametrized layers


def population_net() -> nn.Module:
    """A fixed small net (the parameters do not change: the tests train with lr=0)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def population() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [N, 4] and targets [N, 2]: a linear teacher plus noise, far from the net's fit,
    so that the signal |G|^2 is well above the noise of a few hundred small batches."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(POPULATION, 4, generator=g)
    teacher = torch.randn(4, 2, generator=g)
    y = x @ teacher + 2.0 + 0.5 * torch.randn(POPULATION, 2, generator=g)
    return x, y


def draw(rows: int, step: int, micro: int, rank: int = 0):
    """A small batch of `rows` examples drawn with replacement (its own seed)."""
    x, y = population()
    g = torch.Generator().manual_seed(100_000 * rank + 1000 * step + micro)
    index = torch.randint(0, POPULATION, (rows,), generator=g)
    return x[index], y[index]


def loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean over the batch's examples of each example's loss."""
    return F.mse_loss(net(x), y)


def true_noise(net: nn.Module) -> dict[str, tuple[float, float]]:
    """Per layer (|G|^2, tr(Sigma)) over the whole population, in float64: G the mean of the
    per-example gradients, Sigma their covariance (dividing by N: draws are with replacement)."""
    from torch.func import functional_call, grad, vmap

    net = net.double()
    params = {name: p.detach() for name, p in net.named_parameters()}
    x, y = population()

    def example_loss(p, xi, yi):
        return loss(lambda v: functional_call(net, p, (v,)), xi[None], yi[None])

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x.double(), y.double())
    out = {}
    for layer in LAYERS:
        parts = [g for name, g in per_example.items() if name.startswith(f"{layer}.")]
        grads = torch.cat([g.reshape(POPULATION, -1) for g in parts], 1)
        mean = grads.mean(0)
        out[layer] = (mean.pow(2).sum().item(), (grads - mean).pow(2).sum(1).mean().item())
    net.float()
    return out


def train_with_accumulation(path, steps: int, micro: int, rows: int, scale=None, **attach):
    """Record `steps` steps of `micro` micro-batches of `rows` drawn examples each, with
    lr=0 (the true values stay those of `true_noise`); each micro-batch's loss is divided by
    `micro` (or multiplied by `scale` when given)."""
    import gradscope

    net = population_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    with gradscope.attach(net, path, optimizer=opt, **attach):
        for step in range(steps):
            for j in range(micro):
                x, y = draw(rows, step, j)
                (loss(net, x, y) * (1 / micro if scale is None else scale)).backward()
            opt.step()
            opt.zero_grad()
    return gradscope.open_run(path)


def mean_and_error(values):
    """The mean of per-record estimates and its standard error (records are independent)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values))
