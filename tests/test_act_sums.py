"""Per-call sums of outputs and output gradients: numba kernel and torch path vs brute force."""

import math

import numpy as np
import pytest
import torch

from gradscope.recorder import _stats as S
from gradscope.recorder._act_sums import ActivationSums, OutputGradSums
from gradscope.recorder._cpu_kernels import sums_into
from tests.test_recorder import SmallCNN, assert_matches, image_batch, run_against_reference

SAMPLES = [
    torch.relu(torch.randn(100_003, generator=torch.Generator().manual_seed(0))),
    torch.randn(4_099, generator=torch.Generator().manual_seed(2)) * 1e-3,
    torch.tensor([0.0, -0.0, 3.0, -4.5, 0.0]),  # the largest magnitude is negative
    torch.tensor([-0.0]),
    torch.tensor([1e-42, -3e-40]),  # subnormals
    torch.full((7,), 1e-3),
]


def brute_force(x: torch.Tensor):
    v = x.double().reshape(-1).tolist()
    absmax = max(abs(a) for a in v)
    return [math.fsum(v), math.fsum(a * a for a in v), absmax, sum(a != 0 for a in v)]


@pytest.mark.parametrize("values", SAMPLES)
def test_fused_kernel_matches_brute_force(values):
    out = np.zeros(4, dtype=np.float32)
    sums_into(values.numpy(), out)
    total, sumsq, absmax, nonzeros = brute_force(values)
    np.testing.assert_allclose(out[:2], [total, sumsq], rtol=1e-5, atol=1e-30)
    assert out[2] == np.float32(absmax)  # exact: a max of the values themselves
    assert out[3] == nonzeros  # exact: -0.0 is a zero


def test_fused_kernel_propagates_nan_and_inf():
    out = np.zeros(4, dtype=np.float32)
    sums_into(np.array([1.0, np.nan, 0.0], dtype=np.float32), out)
    assert np.isnan(out[:3]).all() and out[3] == 2  # NaN is not a zero
    sums_into(np.array([1.0, -np.inf, 0.0], dtype=np.float32), out)
    assert out[0] == -np.inf and out[1] == np.inf and out[2] == np.inf and out[3] == 2
    sums_into(np.array([-np.inf, np.nan], dtype=np.float32), out)
    assert np.isnan(out[2])  # NaN wins over inf, as in torch's max


def test_kernel_refuses_a_short_output_row():
    with pytest.raises(ValueError, match="row of 4"):
        sums_into(np.ones(3, dtype=np.float32), np.zeros(3, dtype=np.float32))


def test_cpu_and_torch_paths_give_the_same_rows(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    outputs = [torch.randn(6, n, generator=generator) for n in (3, 40, 5, 90)]
    outputs[1] = torch.relu(outputs[1])
    want = [brute_force(o[:4]) for o in outputs]  # batch_sample=4: the first 4 rows

    fused = ActivationSums(batch_sample=4)
    for position, o in enumerate(outputs):
        fused.add([o], position)
    # Past the fused kernel's exact count (lowered here), calls take the torch path: a record
    # then mixes both kinds of rows, which must come out in call order.
    monkeypatch.setattr(S, "EXACT_FLOAT32_COUNT", 50)
    mixed = ActivationSums(batch_sample=4)
    for position, o in enumerate(outputs):
        mixed.add([o], position)

    monkeypatch.setattr(S, "EXACT_FLOAT32_COUNT", 1)  # every call on the torch path (as on CUDA)
    torch_only = ActivationSums(batch_sample=4)
    for position, o in enumerate(outputs):
        torch_only.add([o], position)

    for sums in (fused, mixed, torch_only):
        rows = sums.per_call("cpu")
        assert rows.shape == (4, S.ACT_SUMS_SIZE)
        assert sums.counts.tolist() == [12, 160, 20, 360] and sums.layers.tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(rows.double().numpy(), np.array(want), rtol=1e-5)
        sums.clear()
        assert len(sums) == 0


def test_output_grad_sums_match_brute_force():
    generator = torch.Generator().manual_seed(3)
    grads = [torch.randn(5, n, generator=generator) for n in (2, 30, 7, 80)]
    grads[2] = grads[2].half()  # low-precision gradients (AMP) are summed in float32
    want = [brute_force(g.float())[1] for g in grads]
    sums = OutputGradSums()
    for position, g in enumerate(grads):
        sums.add(g, position)
    assert sums.layers.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(sums.per_grad("cpu").double().numpy(), want, rtol=1e-5)
    sums.clear()
    assert len(sums) == 0 and len(sums.per_grad("cpu")) == 0


def test_output_grad_sums_keep_rows_when_the_buffer_grows():
    generator = torch.Generator().manual_seed(4)
    grads = [torch.randn(3, 1 + n % 5, generator=generator) for n in range(700)]
    sums = OutputGradSums()
    for record in range(2):  # the buffer grown in the first record is reused by the second
        for position, g in enumerate(grads):
            sums.add(g * (record + 1), position % 9)
        want = [float((g.double() * (record + 1)).square().sum()) for g in grads]
        assert sums.layers.tolist() == [position % 9 for position in range(700)]
        np.testing.assert_allclose(sums.per_grad("cpu").double().numpy(), want, rtol=1e-5)
        sums.clear()


def test_recorder_with_mixed_paths_matches_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "EXACT_FLOAT32_COUNT", 300)  # the bigger outputs take the torch path

    def out_of_place_twin(model):  # the reference needs plain outputs for retain_grad
        twin = SmallCNN(inplace=False)
        twin.load_state_dict(model.state_dict())
        return twin

    run, expected = run_against_reference(
        tmp_path, SmallCNN, image_batch, batch_sample=4, twin_model=out_of_place_twin
    )
    assert_matches(run, expected)


def test_host_rows_grow_past_the_initial_buffer():
    sums = ActivationSums(batch_sample=None)
    values = [torch.full((3,), float(i)) for i in range(600)]
    for i, v in enumerate(values):
        sums.add([v], i % 7)
    rows = sums.per_call("cpu")
    np.testing.assert_array_equal(rows[:, 0].numpy(), [3.0 * i for i in range(600)])
    np.testing.assert_array_equal(rows[:, 3].numpy(), [0] + [3] * 599)
