"""Per-call sums of outputs and output gradients: numba kernel and torch path vs brute force."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from gradscope.recorder import _stats as S
from gradscope.recorder._act_sums import ActivationSums, OutputGradSums
from gradscope.recorder._cpu_kernels import sums_into
from gradscope.recorder._kernels import KernelChoice
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
    """The ACT_SUMS_SIZE per-call sums, in float64: sum, sum of squares, max |x|, nonzeros,
    the shift (the first element) and the sums of (x - shift)^k for k = 1..4."""
    v = x.double().reshape(-1).tolist()
    if not v:
        return [0.0] * S.ACT_SUMS_SIZE
    absmax = max(abs(a) for a in v)
    shifted = [[(a - v[0]) ** k for a in v] for k in range(1, 5)]
    return [math.fsum(v), math.fsum(a * a for a in v), absmax, sum(a != 0 for a in v), v[0]] + [
        math.fsum(powers) for powers in shifted
    ]


def assert_sums(got, want, rtol=1e-5, atol=1e-6):
    """Rows of per-call sums against `brute_force`'s: the first four as before, the shift
    exactly, the shifted power sums to float32 accuracy of their terms' magnitudes."""
    got, want = np.atleast_2d(np.asarray(got, dtype=np.float64)), np.atleast_2d(want)
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=rtol, atol=atol)
    np.testing.assert_array_equal(got[:, 4], want[:, 4].astype(np.float32))
    scale = np.abs(want[:, 5:]) + np.abs(want[:, 6:7]) ** (np.arange(1, 5) / 2) + 1e-30
    np.testing.assert_array_less(np.abs(got[:, 5:] - want[:, 5:]), 2e-5 * scale + atol)


@pytest.mark.parametrize("values", SAMPLES)
def test_fused_kernel_matches_brute_force(values):
    out = np.zeros(S.ACT_SUMS_SIZE, dtype=np.float32)
    sums_into(values.numpy(), out)
    want = brute_force(values)
    np.testing.assert_allclose(out[:2], want[:2], rtol=1e-5, atol=1e-30)
    assert out[2] == np.float32(want[2])  # exact: a max of the values themselves
    assert out[3] == want[3]  # exact: -0.0 is a zero
    assert_sums(out, want, atol=1e-30)


def test_fused_kernel_propagates_nan_and_inf():
    out = np.zeros(S.ACT_SUMS_SIZE, dtype=np.float32)
    sums_into(np.array([1.0, np.nan, 0.0], dtype=np.float32), out)
    assert np.isnan(out[:3]).all() and out[3] == 2  # NaN is not a zero
    sums_into(np.array([1.0, -np.inf, 0.0], dtype=np.float32), out)
    assert out[0] == -np.inf and out[1] == np.inf and out[2] == np.inf and out[3] == 2
    sums_into(np.array([-np.inf, np.nan], dtype=np.float32), out)
    assert np.isnan(out[2])  # NaN wins over inf, as in torch's max


def test_kernel_refuses_a_short_output_row():
    with pytest.raises(ValueError, match="row of 9"):
        sums_into(np.ones(3, dtype=np.float32), np.zeros(8, dtype=np.float32))


AUTO, TORCH = KernelChoice("auto"), KernelChoice("torch")


@pytest.mark.parametrize("kernels", [AUTO, TORCH], ids=["numba", "device"])
def test_every_path_gives_the_same_rows(kernels, monkeypatch):
    generator = torch.Generator().manual_seed(1)
    outputs = [torch.randn(6, n, generator=generator) for n in (3, 40, 5, 90)]
    outputs[1] = torch.relu(outputs[1])
    outputs.append(torch.randn(6, 4, 5, 3, generator=generator).transpose(1, 3))  # strided
    outputs.append(torch.randn(6, 7, generator=generator).bfloat16())  # AMP: summed in float32
    outputs.append(torch.zeros(0, 5))  # no rows
    outputs.append(torch.randn(6, 8, 5, generator=generator))  # 160 sampled, as outputs[1]
    outputs.append(torch.randn(3, 4, generator=generator, requires_grad=True))  # 3 rows < 4
    outputs.append(torch.tensor(-2.5))  # 0-d
    # channels-last, as inside inductor's graphs: its first rows are read in place
    outputs.append(
        torch.randn(6, 3, 2, 2, generator=generator).to(memory_format=torch.channels_last)
    )
    outputs.append(torch.randn(5, 6, 2, generator=generator).transpose(0, 1))  # rows not outermost
    sampled = [o.detach()[:4].float() if o.dim() else o for o in outputs]
    want = [brute_force(o) for o in sampled]
    sums = ActivationSums(batch_sample=4, kernels=kernels)
    for _ in range(2):  # rows are reused from one record to the next
        for position, o in enumerate(outputs):
            sums.add([o], position)
        rows = sums.per_call("cpu")
        assert rows.shape == (len(outputs), S.ACT_SUMS_SIZE)
        assert sums.counts.tolist() == [12, 160, 20, 360, 240, 28, 0, 160, 12, 1, 48, 40]
        assert sums.layers.tolist() == list(range(len(outputs)))
        assert_sums(rows.double().numpy(), np.array(want), rtol=2e-5, atol=1e-6)
        sums.clear()
        assert len(sums) == 0


@pytest.mark.parametrize("kernels", [AUTO, TORCH], ids=["numba", "device"])
def test_a_call_with_several_outputs_is_one_row_per_output_or_call(kernels):
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 5, generator=generator), torch.randn(6, 2, generator=generator)
    sums = ActivationSums(batch_sample=4, kernels=kernels)
    sums.add([a, b], 0)
    rows = sums.per_call("cpu").double().numpy()
    both = torch.cat([a[:4].reshape(-1), b[:4].reshape(-1)])
    if kernels is AUTO:  # one call: one row over both outputs
        assert_sums(rows, [brute_force(both)])
    else:  # one row per output, merged per layer when the record is packed
        assert_sums(rows, [brute_force(a[:4]), brute_force(b[:4])])


def test_numba_and_device_rows_mix_in_call_order(monkeypatch):
    # Past the numba kernel's exact count (lowered here) CPU calls take the device path: a
    # record then mixes both kinds of rows, which must come out in call order.
    monkeypatch.setattr(S, "EXACT_FLOAT32_COUNT", 50)
    generator = torch.Generator().manual_seed(5)
    outputs = [torch.randn(6, n, generator=generator) for n in (3, 40, 5, 90, 2)]
    sums = ActivationSums(batch_sample=4, kernels=AUTO)
    for position, o in enumerate(outputs):
        sums.add([o], position)
    assert sums._calls.column(2).tolist() == [0, -1, 1, -1, 2]  # host rows; -1: device path
    rows = sums.per_call("cpu").double().numpy()
    assert_sums(rows, [brute_force(o[:4]) for o in outputs])


def test_torch_mode_never_imports_numba(tmp_path):
    code = (
        "import os, sys, torch\n"
        "os.environ['GRADSCOPE_KERNELS'] = 'torch'\n"
        "import gradscope\n"
        "nn = torch.nn\n"
        "model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        f"with gradscope.attach(model, {str(tmp_path / 'r.h5')!r}, optimizer=opt) as rec:\n"
        "    model(torch.randn(3, 4)).sum().backward(); opt.step()\n"
        "assert 'numba' not in sys.modules, 'numba was imported'\n"
        "run = gradscope.open_run(rec.path)\n"
        "assert run.steps.tolist() == [0]\n"
        "assert (run.stat('act_mean') == run.stat('act_mean')).all()  # no NaN\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_a_bad_kernel_mode_is_a_usage_error(tmp_path, monkeypatch):
    import gradscope

    monkeypatch.setenv("GRADSCOPE_KERNELS", "triton")
    with pytest.raises(gradscope.UsageError, match="GRADSCOPE_KERNELS='triton'.*auto, torch"):
        gradscope.attach(torch.nn.Linear(2, 2), tmp_path / "r.h5")


def test_full_sample_groups_are_reduced_early_and_drops_skip_their_rows(monkeypatch):
    # A sample group holds at most SAMPLE_GROUP_BYTES (lowered here to 3 rows of 20 floats):
    # past it, its rows are reduced at once; rows of dropped calls are left out when packed.
    monkeypatch.setattr("gradscope.recorder._kernels.SAMPLE_GROUP_BYTES", 3 * 20 * 4)
    generator = torch.Generator().manual_seed(7)
    outputs = [torch.randn(4, 5, generator=generator) for _ in range(8)]
    outputs.insert(3, torch.randn(2, 3, generator=generator))  # another size: its own group
    sums = ActivationSums(batch_sample=None, kernels=TORCH)
    for position, o in enumerate(outputs):
        sums.add([o], position)
    assert len(sums._chunks) == 2  # the 20-float group filled up twice
    rows = sums.per_call("cpu").numpy()
    np.testing.assert_allclose(rows, [brute_force(o) for o in outputs], rtol=1e-5)
    for position, o in enumerate(outputs):  # a second pass, then the first is dropped
        sums.add([o * 2], position)
    sums.backpropagated = len(outputs)
    sums.drop_backpropagated()
    assert sums.layers.tolist() == list(range(len(outputs)))
    rows = sums.per_call("cpu").numpy()
    np.testing.assert_allclose(rows, [brute_force(o * 2) for o in outputs], rtol=1e-5)


def test_output_grad_sums_match_brute_force():
    generator = torch.Generator().manual_seed(3)
    grads = [torch.randn(5, n, generator=generator) for n in (2, 30, 7, 80)]
    grads[2] = grads[2].half()  # low-precision gradients (AMP) are summed in float32
    want = [brute_force(g.float())[1] for g in grads]
    for kernels in (AUTO, TORCH):  # torch.dot on CPU, a vector norm on the device path
        sums = OutputGradSums(kernels)
        for position, g in enumerate(grads):
            sums.add(g, position)
        sums.add(grads[1].t(), 4)  # a strided gradient
        sums.add(grads[3].clone().requires_grad_(), 5)  # a gradient with a graph (create_graph)
        sums.add(grads[0][:, :1].expand(5, 3), 6)  # overlapping elements: summed as it reads
        got, layers, calls = sums.sums_of_squares(8, S.DeviceLists("cpu"))
        assert sums.layers.tolist() == layers.tolist() == [0, 1, 2, 3, 4, 5, 6]
        assert calls.tolist() == [1.0] * 7 + [0.0]
        got = got.double().numpy()
        expanded = 3 * brute_force(grads[0][:, :1])[1]
        np.testing.assert_allclose(got, [*want, want[1], want[3], expanded], rtol=1e-5)
        sums.clear()
        assert len(sums) == 0 and len(sums.sums_of_squares(7, S.DeviceLists("cpu"))[0]) == 0


def test_output_grad_sums_keep_rows_when_the_buffer_grows():
    generator = torch.Generator().manual_seed(4)
    grads = [torch.randn(3, 1 + n % 5, generator=generator) for n in range(700)]
    sums = OutputGradSums(TORCH)
    for record in range(2):  # the buffer grown in the first record is reused by the second
        for position, g in enumerate(grads):
            sums.add(g * (record + 1), position % 9)
        want = [float((g.double() * (record + 1)).square().sum()) for g in grads]
        assert sums.layers.tolist() == [position % 9 for position in range(700)]
        got = sums.sums_of_squares(9, S.DeviceLists("cpu"))[0]
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5)
        sums.clear()


@pytest.mark.parametrize("mode", ["auto-mixed", "torch"])
def test_recorder_on_each_path_matches_reference(tmp_path, monkeypatch, mode):
    if mode == "auto-mixed":
        monkeypatch.setattr(S, "EXACT_FLOAT32_COUNT", 300)  # the bigger outputs: device path
    else:
        monkeypatch.setenv("GRADSCOPE_KERNELS", mode)

    def out_of_place_twin(model):  # the reference needs plain outputs for retain_grad
        twin = SmallCNN(inplace=False)
        twin.load_state_dict(model.state_dict())
        return twin

    run, expected = run_against_reference(
        tmp_path, SmallCNN, image_batch, batch_sample=4, accumulate=2, twin_model=out_of_place_twin
    )
    assert_matches(run, expected)


@pytest.mark.parametrize("kernels", [AUTO, TORCH], ids=["host", "device"])
def test_rows_grow_past_the_initial_buffer_and_drop_in_order(kernels):
    sums = ActivationSums(batch_sample=None, kernels=kernels)
    values = [torch.full((3,), float(i)) for i in range(600)]
    for i, v in enumerate(values):
        sums.add([v], i % 7)
    rows = sums.per_call("cpu")
    np.testing.assert_array_equal(rows[:, 0].numpy(), [3.0 * i for i in range(600)])
    np.testing.assert_array_equal(rows[:, 3].numpy(), [0] + [3] * 599)
    sums.backpropagated = 250  # as when zero_grad wipes the first 250 calls' gradients
    sums.drop_backpropagated()
    rows = sums.per_call("cpu")
    np.testing.assert_array_equal(rows[:, 0].numpy(), [3.0 * i for i in range(250, 600)])
    assert sums.layers.tolist() == [i % 7 for i in range(250, 600)]


def test_the_plain_torch_group_sums_match_the_compiled_ones_and_brute_force():
    from gradscope.recorder._kernels import _group_sums_eager, group_sums

    generator = torch.Generator().manual_seed(8)
    rows = torch.randn(5, 300, generator=generator)
    rows[1] = torch.relu(rows[1])
    rows[2, 7] = float("nan")
    rows[3, 9] = -float("inf")
    unit = rows[4].view(5, 6, 10)[:, 1]  # row 4's unit 1 of [outer 5, units 6, inner 10]
    unit.copy_(-unit.abs())  # never > 0
    want = [brute_force(r) for r in rows]
    positive = (rows.view(5, 5, 6, 10) > 0).any(3).any(1).float()
    squares = rows.double().view(5, 5, 6, 10).pow(2).sum((1, 3))
    for got, flags, unit_sumsq in (
        group_sums(rows.clone().view(5, 5, 6, 10)),
        _group_sums_eager(rows.clone().view(5, 5, 6, 10)),
    ):
        got = got.numpy()
        assert_sums(got[[0, 1, 4]], [want[i] for i in (0, 1, 4)])
        for i in (0, 1, 4):
            torch.testing.assert_close(unit_sumsq[i], squares[i], rtol=1e-5, atol=0)
        assert np.isnan(got[2, :3]).all() and got[2, 3] == want[2][3]  # NaN counts as nonzero
        assert got[3, 0] == -np.inf and got[3, 1] == np.inf and got[3, 2] == np.inf
        torch.testing.assert_close(flags, positive)
        assert flags[4, 1] == 0


def test_a_failed_compilation_warns_and_the_plain_ops_take_over(monkeypatch):
    from gradscope.recorder._kernels import CompiledOrEager, _group_sums, _group_sums_eager

    def no_compiler(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", no_compiler)
    sums = CompiledOrEager(_group_sums, _group_sums_eager, "the activation sums")
    rows = torch.randn(3, 1, 40, 1, generator=torch.Generator().manual_seed(9))
    want = [brute_force(r) for r in rows]
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here.*same values"):
        got, flags, _ = sums(rows.clone())
    assert_sums(got.numpy(), want)
    torch.testing.assert_close(flags, (rows > 0).any(3).any(1).float())
    assert_sums(sums(rows.clone())[0].numpy(), want)  # one warning


def test_the_device_path_compiles_once_not_per_step_or_size(tmp_path, monkeypatch):
    import torch._dynamo.utils

    import gradscope

    monkeypatch.setenv("GRADSCOPE_KERNELS", "torch")
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    graphs = []
    with gradscope.attach(model, tmp_path / "r.h5", optimizer=opt, batch_sample=None):
        for batch in (5, 7, 9, 11, 13, 6):  # a new size every step
            torch.nn.functional.cross_entropy(
                model(torch.randn(batch, 6)), torch.zeros(batch).long()
            ).backward()
            opt.step()
            opt.zero_grad()
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[-1] - graphs[1] <= 1, graphs  # sizes are symbolic: no compile per step


def test_the_fused_record_finish_matches_the_plain_one_nans_included():
    from gradscope.recorder import ALL_STATS
    from gradscope.recorder._record import finish_record, finish_record_fused

    g = torch.Generator().manual_seed(3)
    n = 7
    count = torch.tensor([0.0, 4, 9, 16, 1, 25, 36], dtype=torch.float64)
    sums = {
        "grad_count": count,
        "grad_total": torch.randn(n, generator=g, dtype=torch.float64),
        "grad_sumsq": torch.rand(n, generator=g, dtype=torch.float64) * 10,
        "grad_absmax": torch.rand(n, generator=g, dtype=torch.float64),
        "grad_nonfinite": torch.zeros(n, dtype=torch.float64),
        "weight_sumsq": torch.rand(n, generator=g, dtype=torch.float64),
        "update_sumsq": torch.rand(n, generator=g, dtype=torch.float64) * 1e-4,
        "weight_count": count,
        "weight_frozen": count.div(3).floor(),
        "act_count": count,  # layer 0 never called: NaN moments
        "act_total": torch.randn(n, generator=g, dtype=torch.float64),
        "act_spread": torch.rand(n, generator=g, dtype=torch.float64),
        "act_moment4": torch.rand(n, generator=g, dtype=torch.float64),
        "act_absmax": torch.rand(n, generator=g, dtype=torch.float64),
        "act_nonzeros": count / 2,
        "act_grad_sumsq": torch.rand(n, generator=g, dtype=torch.float64),
        "act_grad_calls": torch.tensor([0.0, 1, 1, 2, 1, 1, 1], dtype=torch.float64),
        "gns_small_sumsq": torch.rand(n, generator=g, dtype=torch.float64),
        "gns_batches": torch.full((n,), 3.0, dtype=torch.float64),
        "gns_rows": torch.full((n,), 24.0, dtype=torch.float64),
        "gns_inv_rows": torch.full((n,), 3 / 8, dtype=torch.float64),
        "gns_large_sumsq": torch.rand(n, generator=g, dtype=torch.float64),
        "gns_large_count": count,
        "act_units": count.sqrt(),
        "act_pos_units": count.sqrt().div(2).floor(),
        "act_grad_units": count.sqrt(),
        "act_grad_nonzero_units": count.sqrt().sub(1).clamp_min(0),
        "act_unit_sumsq": torch.tensor([math.nan, 0, 3, 1, 7, 2, 0], dtype=torch.float64),
    }
    for key in ("act_total", "act_spread", "act_moment4"):  # what a layer never called holds
        sums[key][0] = 0.0
    sums["act_absmax"][0] = float("nan")
    owns = torch.tensor([False, True, True, True, True, True, True])
    order = torch.tensor([3, 1, 0, 2, 6, 5, 4])
    for stats in (ALL_STATS, ("act_grad_norm", "grad_norm"), ("weight_norm",)):
        plain = finish_record(sums, owns, order, stats)
        fused = finish_record_fused(sums, owns, order, stats)
        assert fused.shape == (len(stats), n) and fused.dtype == torch.float32
        torch.testing.assert_close(fused, plain, equal_nan=True)
        assert torch.isnan(plain[:, 2]).all()  # layer 0 (third in depth order) has no values
