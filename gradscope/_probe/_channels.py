"""The probe's statistics of one output: Brock et al.'s channel moments, mean |x|, dead units."""

from __future__ import annotations

import math

import torch
from torch import nn

# The order of a call's values in `output_moments` (names as in the probe file).
CHANNEL_STATS = ("chan_sq_mean", "chan_var", "act_abs_mean", "dead_frac")

# Modules whose 3-D outputs are (batch, channels, length). Any other 3-D output is taken as
# (batch, tokens, features) or (tokens, batch, features): its channels are the last dimension.
CHANNELS_FIRST_1D = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)


def channel_dim(module: nn.Module, ndim: int) -> int | None:
    """The channel dimension of a module's `ndim`-D output: 1 for (N, C, ...) images and
    (N, features); the last one for sequences (N, T, D) unless the module (or, for a block,
    a module inside it) is a 1-D convolution, norm or pool; None for a 1-D output (N,)."""
    if ndim < 2:
        return None
    if ndim == 3 and not any(isinstance(m, CHANNELS_FIRST_1D) for m in module.modules()):
        return 2
    return 1


def first_float_tensor(output) -> torch.Tensor | None:
    """The output the probe measures: the module's tensor, or the first floating-point tensor
    of a tuple, list or dict (MultiheadAttention's attention output, not its weights)."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() and output.dim() > 0 else None
    if isinstance(output, dict):
        output = list(output.values())
    if not isinstance(output, (tuple, list)):
        return None
    for item in output:
        found = first_float_tensor(item)
        if found is not None:
            return found
    return None


def channel_moments(x: torch.Tensor, cdim: int | None) -> tuple[torch.Tensor, ...]:
    """Per channel, float64 [C]: the mean, the (population) variance over every other
    dimension, and whether the channel is exactly zero everywhere.

    The output is viewed as (G, C, L), the dimensions before and after the channel one; sums
    over L run in float32 along memory (torch's fast reductions), their G partial sums are
    combined in float64. (torch.var_mean over (0, 2, 3) took 25 ms on a ResNet's first-stage
    output at batch 128, these sums about 1 ms.)
    """
    x = _as_float(x)
    if cdim is None:
        groups = x.reshape(-1, 1, 1)
    else:
        groups = x.reshape(math.prod(x.shape[:cdim]), x.shape[cdim], -1)  # (G, C, L)
    count = groups.shape[0] * groups.shape[2]
    total = groups.sum(-1).double().sum(0)
    squares = torch.linalg.vector_norm(groups, dim=-1).double().square().sum(0)
    mean = total / count
    variance = (squares / count - mean.square()).clamp_min(0)
    zero = (groups.amax(-1).amax(0) == 0) & (groups.amin(-1).amin(0) == 0)
    return mean, variance, zero


def average_channel_variance(x: torch.Tensor, cdim: int | None) -> torch.Tensor:
    """Mean over channels of each channel's (population) variance over the other dimensions."""
    return channel_moments(x, cdim)[1].mean()


def output_moments(x: torch.Tensor, cdim: int | None) -> torch.Tensor:
    """[chan_sq_mean, chan_var, act_abs_mean, dead_frac] of one output, float64 on its device.

    With m_c and v_c a channel's mean and variance over the batch (and positions): the mean
    over channels of m_c^2 and of v_c (Brock et al. 2021), the mean of |x| over every element,
    and the share of channels that are exactly zero everywhere (units that never fire).
    """
    mean, variance, zero = channel_moments(x, cdim)
    magnitude = _as_float(x).abs().sum().double() / x.numel()
    return torch.stack([mean.square().mean(), variance.mean(), magnitude, zero.double().mean()])


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """A detached float32 (or float64) view of an output: low-precision outputs are widened."""
    x = x.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class CallAverages:
    """Per watched module, values of its calls averaged with their element counts as weights
    (a module called once gets that call's values). Kept on the device: no host sync."""

    def __init__(self, names: list[str], width: int, device):
        self.names = names
        self._position = {name: i for i, name in enumerate(names)}
        self._total = torch.zeros((len(names), width), dtype=torch.float64, device=device)
        self._count = torch.zeros((len(names), 1), dtype=torch.float64, device=device)

    def add(self, name: str, values: torch.Tensor, count: int) -> None:
        """Add one call's values (a [width] tensor) of `count` elements to module `name`."""
        i = self._position[name]
        self._total[i] += values.to(torch.float64) * count
        self._count[i] += count

    def take(self) -> torch.Tensor:
        """The averages [modules, width] (NaN for a module not called), and start over."""
        averages = self._total / self._count
        self._total.zero_()
        self._count.zero_()
        return averages
