"""Per-unit statistics (act_pos_frac, act_grad_zero_frac) against a brute-force reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.recorder import _stats as S
from gradscope.recorder._act_sums import ActivationSums, OutputGradSums
from gradscope.recorder._cpu_kernels import mark_units
from gradscope.recorder._kernels import KernelChoice
from gradscope.recorder._units import unit_axis, unit_shape
from tests.test_recorder import assert_matches, image_batch, run_against_reference, vector_batch

UNIT_STATS = ("act_pos_frac", "act_grad_zero_frac", "act_grad_norm", "act_zero_frac")
AUTO, TORCH = KernelChoice("auto"), KernelChoice("torch")


class DeadMLP(nn.Module):
    """Linear -> nn.ReLU -> Linear (5 of 16 units' biases at -50) -> F.relu -> Linear."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc2.bias[:5] = -50.0  # these units never fire: dead after F.relu

    def forward(self, x):
        return self.head(F.relu(self.fc2(self.relu(self.fc1(x)))))


class DeadCNN(nn.Module):
    """Conv (3 of 8 channels' biases at -50) -> nn.ReLU -> conv -> BatchNorm -> F.relu -> fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.conv1.bias[:3] = -50.0

    def forward(self, x):
        x = self.bn(self.conv2(self.relu(self.conv1(x))))
        return self.fc(F.relu(x).mean(dim=(2, 3)))


def merged(layout, values, at):
    """The layout and each of its units' flag: some value of the unit != 0."""
    flags = torch.zeros(layout.size).index_add_(0, at, (values != 0).float())
    return layout, (flags > 0).numpy()


def brute_force_flags(x: np.ndarray, positive: bool) -> np.ndarray:
    hit = x > 0 if positive else x != 0
    return hit.any(axis=(0, 2)).astype(np.float32)


def test_mark_units_matches_brute_force_on_any_layout():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 5, 5, generator=g)
    x[:, 1] = -x[:, 1].abs()  # never positive
    x[:, 2] = 0.0  # all zero
    x[3, 3, 4, 4] = 1e-30  # one tiny positive, last row and position: found at the end
    x[:, 4] = -x[:, 4].abs()
    x[2, 4, 0, 0] = float("nan")  # NaN is not > 0, and is != 0
    x[:, 5] = -x[:, 5].abs()
    x[1, 5, 2, 2] = float("inf")
    for t in (x, x.to(memory_format=torch.channels_last)):
        a = t.numpy().reshape(4, 6, 25)
        for positive in (True, False):
            flags = np.full(6, 7.0, dtype=np.float32)  # overwritten, not OR-ed
            mark_units(a, flags, positive)
            np.testing.assert_array_equal(flags, brute_force_flags(a, positive))
    with pytest.raises(ValueError, match="a flag per unit"):
        mark_units(np.zeros((1, 3, 1), np.float32), np.zeros(2, np.float32), True)


def test_units_are_channels_of_conv_outputs_and_features_of_linear_ones():
    assert unit_shape(torch.Size([5, 8, 4, 4]), unit_axis(nn.Conv2d(3, 8, 1))) == (5, 8, 16)
    assert unit_shape(torch.Size([5, 7, 16]), unit_axis(nn.Linear(3, 16))) == (35, 16, 1)
    assert unit_shape(torch.Size([5, 8, 9]), unit_axis(nn.BatchNorm1d(8))) == (5, 8, 9)
    assert unit_shape(torch.Size([5, 8, 4, 4]), unit_axis(nn.ReLU())) == (5, 8, 16)
    assert unit_shape(torch.Size([5, 7, 16]), unit_axis(nn.ReLU())) == (35, 16, 1)
    assert (
        unit_shape(torch.Size([5]), None) == (5, 1, 1) and unit_shape(torch.Size([]), None)[1] == 1
    )


@pytest.mark.parametrize("kernels", [AUTO, TORCH], ids=["numba", "device"])
def test_each_path_flags_units_as_brute_force_does(kernels):
    g = torch.Generator().manual_seed(1)
    conv = torch.randn(6, 4, 3, 3, generator=g)
    conv[:, 1] = -conv[:, 1].abs()
    conv[:4, 2] = -conv[:4, 2].abs()  # positive only in rows 4 and 5: outside a 4-row sample
    lin = torch.relu(torch.randn(6, 10, generator=g) - 1.5)  # post-ReLU: some units all zero
    lin_b = torch.relu(torch.randn(6, 10, generator=g) - 1.5)  # the same layer, another call
    axes = [True, False]
    sums = ActivationSums(batch_sample=4, kernels=kernels, unit_axes=axes)
    grads = OutputGradSums(kernels, unit_axes=axes)
    for _ in range(2):  # buffers are reused from one record to the next
        sums.add([conv], 0)
        sums.add([lin], 1)
        sums.add([lin_b], 1)
        grads.add(conv, 0)
        grads.add(lin, 1)
        grads.add(lin_b, 1)
        sums.per_call("cpu")
        layout, flags = merged(*sums.unit_flags(S.DeviceLists("cpu")))
        assert layout.keys.tolist() == [[0, 0, 4], [1, 0, 10]]
        want = [(conv[:4] > 0).any(3).any(2).any(0), ((lin[:4] > 0) | (lin_b[:4] > 0)).any(0)]
        np.testing.assert_array_equal(flags, torch.cat(want).numpy())
        layout, flags = merged(*grads.unit_flags(S.DeviceLists("cpu")))
        want = [(conv != 0).any(3).any(2).any(0), ((lin != 0) | (lin_b != 0)).any(0)]
        np.testing.assert_array_equal(flags, torch.cat(want).numpy())
        squares, layers, calls = grads.sums_of_squares(2, S.DeviceLists("cpu"))
        per_layer = torch.zeros(2, dtype=torch.float64).index_add_(0, layers, squares.double())
        sumsq = [float(t.double().square().sum()) for t in (conv, lin, lin_b)]
        np.testing.assert_allclose(per_layer.numpy(), [sumsq[0], sumsq[1] + sumsq[2]], rtol=1e-5)
        assert calls.tolist() == [1.0, 2.0]
        sums.clear()
        grads.clear()


@pytest.mark.parametrize("mode", ["auto", "torch", "auto-mixed"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_dead_units_match_the_reference(tmp_path, monkeypatch, mode, net):
    # Module and functional ReLUs, conv and linear outputs, two micro-batches a step, on the
    # CPU kernels, the device path, and the two mixed within a record.
    if mode == "torch":
        monkeypatch.setenv("GRADSCOPE_KERNELS", "torch")
    elif mode == "auto-mixed":
        monkeypatch.setattr(S, "EXACT_FLOAT32_COUNT", 40)  # the bigger outputs: device path
    make, batch = (DeadMLP, vector_batch) if net == "mlp" else (DeadCNN, image_batch)
    layers = None if net == "mlp" else ["conv*", "bn", "fc", nn.ReLU]
    run, expected = run_against_reference(
        tmp_path, make, batch, steps=2, batch_sample=4, accumulate=2, layers=layers
    )
    assert_matches(run, expected, stats=UNIT_STATS)
    names = list(run.layers["name"])
    pos, zero = run.stat("act_pos_frac")[0], run.stat("act_grad_zero_frac")[0]
    if net == "mlp":  # fc2's 5 dead units: never > 0 after -50, no gradient through F.relu
        assert pos[names.index("fc2")] <= 11 / 16 and zero[names.index("fc2")] >= 5 / 16
        assert zero[names.index("fc1")] < 1 and zero[names.index("head")] == 0
    else:  # conv1's 3 dead channels; the nn.ReLU after it outputs zeros there
        assert pos[names.index("conv1")] <= 5 / 8 and zero[names.index("conv1")] >= 3 / 8
        assert pos[names.index("relu")] <= 5 / 8 and zero[names.index("fc")] == 0
