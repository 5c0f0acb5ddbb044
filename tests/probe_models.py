"""Small models for the probe tests: MLPs in standard and muP parametrization, transformers."""

from __future__ import annotations

import torch
from torch import nn

D_IN, D_OUT = 16, 10  # the MLPs' input features and classes


class MLP(nn.Module):
    """input -> ReLU -> hidden -> ReLU -> readout, without biases, at a hidden width.

    Standard parametrization (SP): every weight N(0, 1/fan_in). muP (Yang et al. 2022, Tensor
    Programs V, table 3, for SGD): the same, but the readout N(0, 1/width^2), i.e. scaled by
    1/width; `mup_sgd` gives its learning rates.
    """

    def __init__(self, width: int, mup: bool = False):
        super().__init__()
        self.width = width
        self.input = nn.Linear(D_IN, width, bias=False)
        self.act1 = nn.ReLU()
        self.hidden = nn.Linear(width, width, bias=False)
        self.act2 = nn.ReLU()
        self.readout = nn.Linear(width, D_OUT, bias=False)
        for layer in (self.input, self.hidden):
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
        nn.init.normal_(self.readout.weight, std=1 / width if mup else width**-0.5)

    def forward(self, x):
        return self.readout(self.act2(self.hidden(self.act1(self.input(x)))))


def sp_mlp(width: int) -> MLP:
    """The MLP in standard parametrization."""
    return MLP(width, mup=False)


def mup_mlp(width: int) -> MLP:
    """The MLP in muP."""
    return MLP(width, mup=True)


def sp_sgd(lr: float):
    """SGD at one learning rate for every layer (standard parametrization)."""
    return lambda model: torch.optim.SGD(model.parameters(), lr=lr)


def mup_sgd(lr: float):
    """muP's SGD learning rates: input layer lr x width, hidden lr, readout lr / width."""

    def make(model: MLP):
        n = model.width
        groups = [
            {"params": model.input.parameters(), "lr": lr * n},
            {"params": model.hidden.parameters(), "lr": lr},
            {"params": model.readout.parameters(), "lr": lr / n},
        ]
        return torch.optim.SGD(groups, lr=lr)

    return make


def mlp_batches(batch_size: int = 32, seed: int = 0):
    """step -> (inputs, labels): the same batches for every width."""

    def batch(step: int):
        generator = torch.Generator().manual_seed(seed * 1000 + step)
        x = torch.randn(batch_size, D_IN, generator=generator)
        return x, torch.randint(D_OUT, (batch_size,), generator=generator)

    return batch


class Transformer(nn.Module):
    """A stack of PyTorch encoder layers and a linear head: post-LN (the original Transformer)
    or pre-LN (norm_first, with a final LayerNorm), as compared by Xiong et al. 2020."""

    def __init__(self, pre_ln: bool, layers: int = 12, d_model: int = 32, classes: int = 10):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, 4, 2 * d_model, dropout=0.0, batch_first=True, norm_first=pre_ln
        )
        final = nn.LayerNorm(d_model) if pre_ln else None
        self.encoder = nn.TransformerEncoder(layer, layers, norm=final, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):  # x: (batch, tokens, d_model)
        return self.head(self.encoder(x))
