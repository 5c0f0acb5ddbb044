"""Per-parameter sums over the flat buffer: CPU kernel and torch path, against brute force."""

import math

import numpy as np
import pytest
import torch

from gradscope.recorder import _param_stats as P
from gradscope.recorder._kernels import KernelChoice


def brute_force(t: torch.Tensor):
    v = t.double().reshape(-1).tolist()
    finite = [a for a in v if math.isfinite(a)]
    absmax = math.nan if any(math.isnan(a) for a in v) else max(abs(a) for a in v)
    return [
        math.fsum(v) if len(finite) == len(v) else math.nan,
        math.fsum(a * a for a in v),
        absmax,
        len(v) - len(finite),
    ]


def laid_out(tensors):
    groups = P.ParamGroups([[torch.nn.Parameter(t.clone())] for t in tensors], KernelChoice("auto"))
    layout = groups.layout(tuple(range(len(tensors))), "cpu")
    flat = groups.gather("test", layout, [groups.params[i] for i in layout.positions], "cpu")
    want = [brute_force(tensors[i]) for i in layout.positions]  # flat order
    return layout, flat, want


def sample_tensors():
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(10_000, generator=generator) * 3,  # crosses the kernel's 4,096 chunks
        torch.randn(3, 7, generator=generator),
        torch.randn(21, generator=generator),  # same size: one block with the one above
        torch.tensor([0.5, -9.0, 2.0]),  # the largest magnitude is negative
        torch.randn(4, 1000, generator=generator) + 100.0,  # large mean: a float32 sum drifts
    ]
    bad = torch.randn(5000, generator=generator)
    bad[[3, 4100]] = float("inf")
    bad[7] = -float("inf")
    tensors.append(bad)
    return tensors


@pytest.mark.parametrize("fused", [True, False], ids=["numba", "torch"])
def test_per_param_sums_match_brute_force(fused):
    layout, flat, want = laid_out(sample_tensors())
    kept = flat.clone()
    out = torch.empty(4, len(layout.params))
    got = P.per_param_sums(layout, flat, fused, out).double().numpy()
    np.testing.assert_allclose(got[:, :2], np.array(want)[:, :2], rtol=2e-6)
    np.testing.assert_array_equal(got[:, 2:], np.array(want)[:, 2:])  # max and count: exact
    if fused:
        assert torch.equal(flat, kept)  # the CPU kernel leaves the gradients as they were
    np.testing.assert_allclose(
        P.per_param_sumsq(layout, kept, out[0], fused).double().numpy(),
        np.array(want)[:, 1],
        rtol=2e-6,
    )


@pytest.mark.parametrize("fused", [True, False], ids=["numba", "torch"])
def test_per_param_sums_propagate_nan(fused):
    layout, flat, _ = laid_out([torch.tensor([1.0, float("nan"), -float("inf"), 2.0])])
    out = torch.empty(4, 1)
    total, sumsq, absmax, nonfinite = P.per_param_sums(layout, flat, fused, out)[0].tolist()
    assert math.isnan(total) and math.isnan(sumsq) and math.isnan(absmax) and nonfinite == 2


def test_cpu_kernel_refuses_a_short_output():
    from gradscope.recorder._cpu_kernels import param_sums_into

    with pytest.raises(ValueError, match="parameters, 4"):
        param_sums_into(np.ones(6, np.float32), np.array([0, 3, 6]), np.zeros((1, 4)))


def test_recorder_on_the_torch_path_matches_reference(tmp_path, monkeypatch):
    # The path other devices take, run on CPU: every parameter statistic against brute force.
    from tests.test_recorder import ManySizes, assert_matches, run_against_reference, vector_batch

    monkeypatch.setenv("GRADSCOPE_KERNELS", "torch")
    run, expected = run_against_reference(tmp_path, ManySizes, vector_batch)
    assert_matches(run, expected)
