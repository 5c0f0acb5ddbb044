"""Activation outliers (act_kurtosis, act_max_rms, act_outlier_channel) against numpy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.recorder import _stats as S
from gradscope.recorder._act_sums import ActivationSums
from gradscope.recorder._kernels import KernelChoice
from gradscope.recorder._units import unit_axis
from tests.test_recorder import assert_matches, image_batch, run_against_reference

OUTLIER_STATS = ("act_kurtosis", "act_max_rms", "act_outlier_channel", "act_std")
AUTO, TORCH = KernelChoice("auto"), KernelChoice("torch")


def pearson_kurtosis(x: np.ndarray) -> float:
    """E[(x - mean)^4] / E[(x - mean)^2]^2 over every element, written out in float64."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    deviation = x - x.mean()
    return float(np.mean(deviation**4) / np.mean(deviation**2) ** 2)


class OutlierNet(nn.Module):
    """Conv whose channel 4 is 8x the others -> GELU -> pooled -> Linear whose feature 7 is
    8x the others -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 10)
        self.head = nn.Linear(10, 3)
        with torch.no_grad():
            self.conv.weight[4] *= 8.0
            self.fc1.weight[7] *= 8.0
            self.fc1.bias[7] = 3.0

    def forward(self, x):
        x = F.gelu(self.conv(x)).mean(dim=(2, 3))
        return self.head(self.fc1(x))


@pytest.mark.parametrize("mode", ["auto", "torch", "auto-mixed"])
def test_outlier_statistics_match_numpy_over_micro_batches(tmp_path, monkeypatch, mode):
    # Conv (channels) and linear (features) outputs, two micro-batches a step, sampled rows,
    # on the CPU kernels, the device path, and the two mixed within a record.
    if mode == "torch":
        monkeypatch.setenv("GRADSCOPE_KERNELS", "torch")
    elif mode == "auto-mixed":
        monkeypatch.setattr(S, "EXACT_FLOAT32_COUNT", 100)  # the conv output: device path
    run, expected = run_against_reference(
        tmp_path, OutlierNet, image_batch, steps=2, batch_sample=4, accumulate=2
    )
    assert_matches(run, expected, stats=OUTLIER_STATS)
    names = list(run.layers["name"])
    channel = run.stat("act_outlier_channel")
    assert (channel[:, names.index("conv")] == 4).all()
    assert (channel[:, names.index("fc1")] == 7).all()
    assert (run.stat("act_kurtosis")[:, names.index("fc1")] > 3).all()


@pytest.mark.parametrize("kernels", [AUTO, TORCH], ids=["numba", "device"])
def test_moments_combine_exactly_over_calls_far_from_zero(kernels):
    # Three calls of one layer (heavy tails, a mean 1000 times the spread; raw sums of x^4
    # in float32 would keep no digit of the kurtosis) and a features-last output [B, T, F]:
    # the per-call sums, merged once per record, against numpy over all elements together.
    g = np.random.default_rng(0)
    calls = [1000.0 + g.standard_t(5, size=(n, 7, 5)) for n in (3, 8, 5)]
    tokens = g.standard_normal((4, 6, 9))
    tokens[..., 2] *= 5.0  # feature 2: the outlier
    sums = ActivationSums(None, kernels, [None, unit_axis(nn.Linear(1, 1))], squares=True)
    for x in calls:
        sums.add([torch.tensor(x, dtype=torch.float32)], 0)
    sums.add([torch.tensor(tokens, dtype=torch.float32)], 1)
    per_call = sums.per_call("cpu")
    counts = torch.tensor(sums.counts, dtype=torch.float64)
    layers = torch.tensor(sums.layers, dtype=torch.long)
    layer = S.activation_layer_sums(per_call, counts, layers, 2)
    mean = layer["act_total"] / layer["act_count"]
    layer.update(S.activation_moments(per_call, counts, layers, mean))
    stats = S.activation_stats(layer)
    everything = np.concatenate([x.reshape(-1) for x in calls]).astype(np.float32)
    for i, x in enumerate([everything, tokens.astype(np.float32)]):
        x = x.astype(np.float64)
        np.testing.assert_allclose(stats["act_kurtosis"][i], pearson_kurtosis(x), rtol=1e-4)
        rms = np.sqrt(np.mean(x**2))
        np.testing.assert_allclose(stats["act_max_rms"][i], np.abs(x).max() / rms, rtol=1e-5)
    on_device = S.DeviceLists(torch.device("cpu"))
    largest = S.largest_units(*sums.unit_squares(on_device), 2, on_device, fused=False)
    # a 3-d output of another module: units along the last dim, as for the tokens' features
    squares = sum((x.astype(np.float32).astype(np.float64) ** 2).sum(axis=(0, 1)) for x in calls)
    assert largest.tolist() == [np.argmax(squares), 2]
