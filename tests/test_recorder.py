"""Recorder statistics against a brute-force autograd reference, on small models."""

import copy
import math
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.recorder import ALL_STATS
from tests.reference import (
    ReferenceProbe,
    act_grad_reference,
    act_reference,
    gns_reference,
    grad_reference,
    gradient_change,
    parameter_grads,
    unit_reference,
    weight_copy,
    weight_reference,
)

# ----- small models ---------------------------------------------------------------------------


def mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))


class SmallCNN(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)
        self.inplace = inplace

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        identity = x
        out = self.bn2(self.conv2(x))
        if self.inplace:
            out += identity  # in-place residual add, as in torchvision's BasicBlock
        else:
            out = out + identity
        out = self.relu(out)
        return self.fc(out.mean(dim=(2, 3)))


class SharedTwice(nn.Module):
    """One Linear applied twice in a forward (shared weights)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.shared(h)))


Pair = namedtuple("Pair", "a b")


class Splitter(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.kind = kind

    def forward(self, x):
        h = self.lin(x)
        a, b = h[:, :4], h[:, 4:] * 2
        if self.kind == "tuple":
            return (a, (b, torch.ones(1, dtype=torch.long)))
        if self.kind == "list":
            return [a, b]
        if self.kind == "dict":
            return {"a": a, "b": b}
        return Pair(a, b)


class StructuredOutputs(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.split = Splitter(kind)
        self.head = nn.Linear(8, 3)
        self.kind = kind

    def forward(self, x):
        out = self.split(x)
        if self.kind == "tuple":
            a, (b, _) = out
        elif self.kind == "dict":
            a, b = out["a"], out["b"]
        else:
            a, b = out[0], out[1]
        return self.head(torch.cat([a, b], dim=1))


class WithUnused(nn.Module):
    """A frozen layer and a layer that gets no gradient (its output is unused)."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(6, 8)
        self.frozen.requires_grad_(False)
        self.used = nn.Linear(8, 3)
        self.unused = nn.Linear(6, 3)

    def forward(self, x):
        _ = self.unused(x.detach()).detach()
        return self.used(torch.relu(self.frozen(x)))


class TinyTransformer(nn.Module):
    """Token and position embeddings, a 2-layer nn.TransformerEncoder, a head tied to the token
    embedding. Used without being called: each attention's out_proj (MultiheadAttention reads
    its weight) and the position embedding (its weight is added to the input)."""

    def __init__(self, vocab=5, length=4, width=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(length, width)
        layer = nn.TransformerEncoderLayer(width, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens):
        h = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
        return self.norm(self.encoder(h)).mean(dim=1) @ self.tok.weight.T  # tied head


def token_batch(step, micro=0, n=6):
    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randint(0, 5, (n, 4), generator=g), torch.randint(0, 5, (n,), generator=g)


class ScaleWithEmpty(nn.Module):
    """A per-feature scale that also owns a zero-element parameter."""

    def __init__(self, width):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.empty = nn.Parameter(torch.zeros(0))

    def forward(self, x):
        return x * self.scale + self.empty.sum()


class ManySizes(nn.Module):
    """Equal-sized parameters in several layers among odd sizes, tied weights, an empty one."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 5), nn.Linear(5, 8), nn.Linear(8, 8)]
        )
        self.tied = nn.Linear(8, 8)
        self.tied.weight = self.layers[1].weight  # one parameter owned by two layers
        self.scale = ScaleWithEmpty(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(self.scale(torch.tanh(self.tied(x))))


def vector_batch(step, micro=0, n=12):
    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def image_batch(step, micro=0, n=10):
    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


# ----- driver: recorded model and its brute-force twin, stepped together -----------------------


def run_against_reference(
    tmp_path,
    make_model,
    batch_fn,
    steps=3,
    every=1,
    batch_sample=None,
    accumulate=1,
    layers=None,
    twin_model=None,
    forward=None,
):
    """Train `make_model()` recorded beside a twin with reference probes; `forward(model)`
    gives what to call in place of the model (a compiled wrapper, say)."""
    torch.manual_seed(0)
    model = make_model()
    twin = twin_model(model) if twin_model else copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    path = tmp_path / "run.h5"
    rec = gradscope.attach(
        model, path, optimizer=opt, every=every, batch_sample=batch_sample, layers=layers
    )
    twin_modules = {(n or "model"): m for n, m in twin.named_modules()}
    watched = {name: twin_modules[name] for name in rec.layer_names}
    probe = ReferenceProbe(watched)
    expected = {}
    net = forward(model) if forward else model
    for step in range(steps):
        probe.clear()
        changes, rows = [], []  # each micro-batch's gradient and rows: the small batches
        for micro in range(accumulate):
            x, y = batch_fn(step, micro)
            F.cross_entropy(net(x), y).backward()
            before = parameter_grads(twin)
            F.cross_entropy(twin(x), y).backward()
            changes.append(gradient_change(twin, before))
            rows.append(len(x))
        ref = {name: grad_reference(m) for name, m in watched.items()}
        for name, values in gns_reference(watched, changes, rows).items():
            ref[name].update(values)
        before = {name: weight_copy(m) for name, m in watched.items()}
        opt.step()
        opt_twin.step()
        for name, m in watched.items():
            ref[name].update(weight_reference(before[name], m))
            ref[name].update(act_reference(probe.outputs[name], batch_sample))
            ref[name].update(unit_reference(probe.outputs[name], batch_sample, m))
            ref[name]["act_grad_norm"] = act_grad_reference(probe.outputs[name])
        expected[step] = ref
        opt.zero_grad()
        opt_twin.zero_grad()
    rec.close()
    probe.remove()
    return gradscope.open_run(path), expected


def assert_matches(run, expected, stats=ALL_STATS, rtol=1e-4, atol=1e-6):
    names = list(run.layers["name"])
    for i, step in enumerate(run.steps):
        for stat in stats:
            got = run.stat(stat)[i]
            want = np.array([expected[int(step)][name][stat] for name in names])
            np.testing.assert_allclose(
                got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{stat} at step {step}"
            )


# ----- statistics -----------------------------------------------------------------------------


def test_mlp_all_statistics_match_reference(tmp_path):
    run, expected = run_against_reference(tmp_path, mlp, vector_batch)
    assert list(run.steps) == [0, 1, 2]
    assert list(run.layers["name"]) == ["0", "2", "4"]
    assert list(run.layers["params"]) == [6 * 16 + 16, 16 * 8 + 8, 8 * 3 + 3]
    assert set(run.stats) == set(ALL_STATS)
    assert_matches(run, expected)


def out_of_place_twin(model: SmallCNN) -> SmallCNN:
    """The reference of an in-place SmallCNN: the same weights without in-place ops, where
    retain_grad sees plain outputs."""
    twin = SmallCNN(inplace=False)
    twin.load_state_dict(model.state_dict())
    return twin


def test_cnn_with_inplace_ops_matches_out_of_place_twin(tmp_path):
    run, expected = run_against_reference(
        tmp_path,
        SmallCNN,
        image_batch,
        layers=["conv*", "bn*", "fc", nn.ReLU],
        twin_model=out_of_place_twin,
    )
    names = list(run.layers["name"])
    assert names == ["conv1", "bn1", "relu", "conv2", "bn2", "fc"]  # depth = first-call order
    # bn2's output is modified in place by `+= identity`: its stats are of the value it produced.
    assert_matches(run, expected)
    assert np.isnan(run.stat("grad_norm")[:, names.index("relu")]).all()  # no parameters


def test_batch_sample_uses_first_rows(tmp_path):
    run, expected = run_against_reference(tmp_path, mlp, vector_batch, batch_sample=5)
    assert_matches(run, expected)


def test_shared_module_gets_one_value_over_all_calls(tmp_path):
    run, expected = run_against_reference(tmp_path, SharedTwice, vector_batch)
    assert list(run.layers["name"]) == ["inp", "shared", "out"]
    assert_matches(run, expected)


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "namedtuple"])
def test_structured_outputs(tmp_path, kind):
    run, expected = run_against_reference(tmp_path, lambda: StructuredOutputs(kind), vector_batch)
    assert_matches(run, expected)
    assert np.isfinite(run.stat("act_grad_norm")).all()


def test_modules_used_without_a_call_sit_where_their_gradient_arrives(tmp_path):
    # out_proj is the last step of self_attn's forward: between self_attn and norm1 (post-LN);
    # the position embedding is added to the input: beside the token embedding, not after
    # the head where a module whose forward never runs used to go.
    run, expected = run_against_reference(tmp_path, TinyTransformer, token_batch, steps=2)
    block = ["self_attn", "self_attn.out_proj", "norm1", "linear1", "linear2", "norm2"]
    blocks = [f"encoder.layers.{i}.{name}" for i in range(2) for name in block]
    assert list(run.layers["name"]) == ["tok", "pos", *blocks, "norm"]
    assert_matches(run, expected)  # every row holds its own layer's numbers
    out_proj = run.stat("grad_norm")[:, 3]
    assert np.isfinite(out_proj).all() and np.isnan(run.stat("act_mean")[:, 3]).all()


def test_frozen_and_gradientless_layers_give_nan(tmp_path):
    run, expected = run_against_reference(tmp_path, WithUnused, vector_batch)
    names = list(run.layers["name"])
    assert names == ["unused", "frozen", "used"]
    assert_matches(run, expected)
    for layer in ("frozen", "unused"):
        assert np.isnan(run.stat("grad_norm")[:, names.index(layer)]).all()
    assert np.isfinite(run.stat("weight_norm")).all()
    assert (run.stat("update_ratio")[:, names.index("frozen")] == 0).all()


def test_parameters_of_equal_and_odd_sizes_tied_and_empty(tmp_path):
    # Parameters are reduced in blocks of equal size: each layer must still get its own values.
    run, expected = run_against_reference(tmp_path, ManySizes, vector_batch)
    names = list(run.layers["name"])
    assert names == [f"layers.{i}" for i in range(5)] + ["tied", "scale", "head"]
    assert_matches(run, expected)
    assert np.isfinite(run.stat("grad_norm")).all()


def test_gradient_accumulation_records_once_per_optimizer_step(tmp_path):
    run, expected = run_against_reference(tmp_path, mlp, vector_batch, steps=2, accumulate=3)
    assert list(run.steps) == [0, 1]
    assert_matches(run, expected)


def test_every_int_and_callable(tmp_path):
    run, expected = run_against_reference(tmp_path, mlp, vector_batch, steps=7, every=3)
    assert list(run.steps) == [0, 3, 6]
    assert_matches(run, expected)
    (tmp_path / "run.h5").unlink()
    run, _ = run_against_reference(
        tmp_path, mlp, vector_batch, steps=6, every=lambda s: s in (1, 4)
    )
    assert list(run.steps) == [1, 4]


def test_nonfinite_gradients_are_counted(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.attach(model, tmp_path / "r.h5", optimizer=opt) as rec:
        x, y = vector_batch(0)
        F.cross_entropy(model(x), y).backward()
        model[2].weight.grad[0, :3] = float("inf")
        model[2].bias.grad[1] = float("nan")
        with pytest.warns(RuntimeWarning, match="replay came out finite.* 2 \\(4\\)"):
            opt.step()  # made after the backward: the replay of the step finds none
        assert rec.current_step == 1
    run = gradscope.open_run(tmp_path / "r.h5")
    assert list(run.stat("grad_nonfinite")[0]) == [0, 4, 0]
    assert not np.isfinite(run.stat("grad_norm")[0, 1])


# ----- step boundaries: AMP, no optimizer, evaluation, compile --------------------------------


def test_amp_gradscaler_records_unscaled_gradients_and_skips_skipped_steps(tmp_path):
    torch.manual_seed(0)
    model, twin = mlp(), None
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    rec = gradscope.attach(model, tmp_path / "amp.h5", optimizer=opt, stats=["grad_norm"])
    expected = []
    for it in range(3):
        x, y = vector_batch(it)
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if it == 1:
            model[0].weight.grad[0, 0] = float("inf")  # the scaler must skip this step
        F.cross_entropy(twin(x), y).backward()
        if it != 1:
            expected.append([grad_reference(m)["grad_norm"] for m in (twin[0], twin[2], twin[4])])
            opt_twin.step()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        opt_twin.zero_grad()
    rec.close()
    run = gradscope.open_run(tmp_path / "amp.h5")
    assert list(run.steps) == [0, 1]  # 3 iterations, one skipped: 2 optimizer steps
    np.testing.assert_allclose(run.stat("grad_norm"), np.array(expected), rtol=1e-4)


def test_without_optimizer_user_calls_step(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    rec = gradscope.attach(model, tmp_path / "manual.h5", every=2)
    probe = ReferenceProbe({"0": twin[0], "2": twin[2], "4": twin[4]})
    expected = []
    for step in range(4):
        probe.clear()
        x, y = vector_batch(step)
        before = [weight_copy(m) for m in (twin[0], twin[2], twin[4])]
        for net in (model, twin):
            net.zero_grad()
            F.cross_entropy(net(x), y).backward()
            with torch.no_grad():
                for p in net.parameters():
                    p -= 0.1 * p.grad
        refs = []
        modules = {"0": twin[0], "2": twin[2], "4": twin[4]}
        gns = gns_reference(modules, [parameter_grads(twin)], [len(x)])
        for name, m, b in zip(("0", "2", "4"), (twin[0], twin[2], twin[4]), before, strict=True):
            r = grad_reference(m) | weight_reference(b, m) | act_reference(probe.outputs[name], 32)
            r |= unit_reference(probe.outputs[name], 32, m)
            r["act_grad_norm"] = act_grad_reference(probe.outputs[name])
            refs.append(r | gns[name])
        expected.append(refs)
        rec.step()
    rec.close()
    run = gradscope.open_run(tmp_path / "manual.h5")
    assert list(run.steps) == [0, 2]
    for i, step in enumerate((0, 2)):
        for stat in ALL_STATS:
            want = [r[stat] for r in expected[step]]
            np.testing.assert_allclose(run.stat(stat)[i], want, rtol=1e-4, atol=1e-6, err_msg=stat)


def test_rec_step_with_optimizer_is_an_error(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.attach(model, tmp_path / "r.h5", optimizer=opt) as rec:
        with pytest.raises(gradscope.UsageError, match="optimizer.step"):
            rec.step()


def test_evaluation_under_no_grad_records_nothing(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.attach(model, tmp_path / "a.h5", optimizer=opt) as rec:
        for step in range(2):
            x, y = vector_batch(step)
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():  # evaluation in the middle of a step
                model(torch.randn(50, 6) * 100)
            opt.step()
            opt.zero_grad()
            rec.log(loss=1.0)
    opt2 = torch.optim.SGD(twin.parameters(), lr=0.1)
    with gradscope.attach(twin, tmp_path / "b.h5", optimizer=opt2):
        for step in range(2):
            x, y = vector_batch(step)
            F.cross_entropy(twin(x), y).backward()
            opt2.step()
            opt2.zero_grad()
    a, b = gradscope.open_run(tmp_path / "a.h5"), gradscope.open_run(tmp_path / "b.h5")
    for stat in ALL_STATS:
        np.testing.assert_allclose(a.stat(stat), b.stat(stat), rtol=1e-6, equal_nan=True)


def train_compiled_and_eager(tmp_path, steps, compiled, eager):
    """Step a compiled and an eager twin on the same batches; return their runs (c.h5, eager.h5)."""
    for step in range(steps):
        x, y = vector_batch(step)
        for net, opt, _ in (compiled, eager):
            F.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad()
    compiled[2].close()
    eager[2].close()
    return gradscope.open_run(tmp_path / "c.h5"), gradscope.open_run(tmp_path / "eager.h5")


def test_attach_to_compiled_model_records_everything(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, backend="eager")
    x, y = vector_batch(99)
    F.cross_entropy(compiled(x), y).backward()  # compiled before the hooks exist
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    rec = gradscope.attach(compiled, tmp_path / "c.h5", optimizer=opt)
    rec_twin = gradscope.attach(twin, tmp_path / "eager.h5", optimizer=opt_twin)
    got, want = train_compiled_and_eager(
        tmp_path, 2, (compiled, opt, rec), (twin, opt_twin, rec_twin)
    )
    assert list(got.layers["name"]) == ["0", "2", "4"]
    for stat in ALL_STATS:
        np.testing.assert_allclose(got.stat(stat), want.stat(stat), rtol=1e-5, err_msg=stat)


# ----- metrics, hooks, resume -----------------------------------------------------------------


def test_log_stores_metrics_against_the_current_step(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.attach(model, tmp_path / "m.h5", optimizer=opt, every=5) as rec:
        for step in range(3):
            x, y = vector_batch(step)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            rec.log(before_step=float(step))  # during step `step`
            opt.step()
            opt.zero_grad()
            rec.log(loss=loss.item(), lr=0.1)  # just after step `step`
        rec.log(step=10, test_error=0.25)
    m = gradscope.open_run(tmp_path / "m.h5").metrics
    assert list(m["before_step"].dropna()) == [0.0, 1.0, 2.0]
    assert list(m["before_step"].dropna().index) == [0, 1, 2]
    assert list(m["loss"].dropna().index) == [0, 1, 2]
    assert m.loc[10, "test_error"] == 0.25


def test_log_takes_one_real_number_per_metric_and_says_so(tmp_path):
    accepted = "must be a real number: a Python or NumPy int or float, or a one-element tensor"
    with gradscope.attach(mlp(), tmp_path / "m.h5") as rec:
        bad = {
            "loss": (torch.tensor([1.0, 2.0]), "got a Tensor of 2 elements"),
            "note": ("hello", "got 'hello' (str)"),
            "lr": ("0.1", "got '0.1' (str)"),
            "acc": (np.ones(3), "got a ndarray of 3 elements"),
            "z": (torch.tensor(1 + 2j), "got (1+2j) (complex)"),
            "none": (None, "got None (NoneType)"),
        }
        for name, (value, got) in bad.items():
            with pytest.raises(gradscope.UsageError) as caught:
                rec.log(**{name: value})
            assert str(caught.value) == (
                f"metric {name!r} {accepted} or array (inf and NaN are stored as they are); {got}"
            )
        good = [1, 2.5, np.float32(0.5), torch.tensor(3.0), torch.tensor([4.0]), np.array([[6]])]
        good += [math.inf, math.nan]
        for step, value in enumerate(good):
            rec.log(step=step, x=value)
    metrics = gradscope.open_run(tmp_path / "m.h5").metrics  # only the good ones were stored
    assert list(metrics.columns) == ["x"]
    np.testing.assert_array_equal(metrics["x"], [1, 2.5, 0.5, 3, 4, 6, math.inf, math.nan])


def test_close_removes_every_hook(tmp_path):
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = gradscope.attach(model, tmp_path / "h.h5", optimizer=opt, layers=["*"])
    assert any(m._forward_hooks for m in model.modules())
    rec.close()
    rec.close()  # idempotent
    assert not any(m._forward_hooks for m in model.modules())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert "zero_grad" not in vars(opt)
    x, y = image_batch(0)
    F.cross_entropy(model(x), y).backward()  # still trains, records nothing
    opt.step()


def test_resume_appends_after_the_last_step(tmp_path):
    path = tmp_path / "r.h5"
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train(rec, n):
        for _ in range(n):
            x, y = vector_batch(rec.current_step)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()

    with gradscope.attach(model, path, optimizer=opt) as rec:
        train(rec, 3)
    with pytest.raises(gradscope.RunFileError, match="exists"):
        gradscope.attach(model, path, optimizer=opt)
    with gradscope.attach(model, path, optimizer=opt, resume=True) as rec:
        assert rec.current_step == 3
        train(rec, 2)
    assert list(gradscope.open_run(path).steps) == [0, 1, 2, 3, 4]
    with gradscope.attach(model, path, optimizer=opt, resume=True, start_step=2) as rec:
        train(rec, 1)  # resumed from a checkpoint at step 2: steps >= 2 are re-recorded
    assert list(gradscope.open_run(path).steps) == [0, 1, 2]
    with gradscope.attach(model, path, optimizer=opt, overwrite=True) as rec:
        train(rec, 1)
    assert list(gradscope.open_run(path).steps) == [0]


# ----- bad input ------------------------------------------------------------------------------


def test_bad_input(tmp_path):
    with pytest.raises(TypeError, match="nn.Module"):
        gradscope.attach("not a model", tmp_path / "x.h5")
    with pytest.raises(gradscope.UsageError, match="grad_norm"):
        gradscope.attach(mlp(), tmp_path / "x.h5", stats=["grad_nrom"])
    with pytest.raises(gradscope.UsageError, match="module names: .*0, 1, 2"):
        gradscope.attach(mlp(), tmp_path / "x.h5", layers=["encoder.*"])
    with pytest.raises(gradscope.UsageError, match="Conv2d"):
        gradscope.attach(mlp(), tmp_path / "x.h5", layers=[nn.Conv2d])
    with pytest.raises(gradscope.UsageError, match="every"):
        gradscope.attach(mlp(), tmp_path / "x.h5", every=0)
    assert not (tmp_path / "x.h5").exists()


def test_layers_by_type_and_glob(tmp_path):
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.attach(model, tmp_path / "t.h5", optimizer=opt, layers=[nn.ReLU, "fc"]):
        x, y = image_batch(0)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    run = gradscope.open_run(tmp_path / "t.h5")
    assert list(run.layers["name"]) == ["relu", "fc"]
    assert list(run.layers["type"]) == ["ReLU", "Linear"]
    zero_frac = run.stat("act_zero_frac")[0, 0]
    assert 0.2 < zero_frac < 0.8 and not math.isnan(zero_frac)


COMPILED_IN_A_FRESH_PROCESS = """
import sys, torch, torch.nn.functional as F, gradscope
model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
compiled = torch.compile(model, backend="eager")
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with gradscope.attach(compiled, sys.argv[1], optimizer=opt):
    for step in range(3):
        F.cross_entropy(compiled(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
        opt.step()
        opt.zero_grad()
"""


def test_a_compiled_model_records_in_a_process_whose_cpu_kernels_are_not_loaded_yet(tmp_path):
    # The hooks' first numba call, traced by dynamo, used to crash the forward.
    path = tmp_path / "fresh.h5"
    subprocess.run(
        [sys.executable, "-c", COMPILED_IN_A_FRESH_PROCESS, str(path)], check=True, timeout=300
    )
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, 1, 2]
    assert not np.isnan(run.stat("act_mean")).any()


def test_attach_before_compile_records_everything(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    rec = gradscope.attach(model, tmp_path / "c.h5", optimizer=opt, every=2)
    rec_twin = gradscope.attach(twin, tmp_path / "eager.h5", optimizer=opt_twin, every=2)
    compiled = torch.compile(model, backend="eager")
    got, want = train_compiled_and_eager(
        tmp_path, 4, (compiled, opt, rec), (twin, opt_twin, rec_twin)
    )
    assert list(got.steps) == [0, 2]
    for stat in ALL_STATS:
        np.testing.assert_allclose(got.stat(stat), want.stat(stat), rtol=1e-5, err_msg=stat)


def cache_entries(fn):
    """How many compiled versions of `fn` dynamo holds."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(fn.__code__))


def record_two_steps(path):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.attach(model, path, optimizer=opt, batch_sample=None):
        for step in range(2):
            x, y = vector_batch(step)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()


def test_gradscope_compiles_its_own_kernels_once_per_process_not_per_attach(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("GRADSCOPE_KERNELS", "torch")  # its compiled kernels run
    record_two_steps(tmp_path / "a.h5")
    frames = counters["frames"]["total"]
    record_two_steps(tmp_path / "b.h5")  # attach and close leave compiled code alone
    assert counters["frames"]["total"] == frames


def test_close_drops_the_code_others_compiled_while_attached_and_keeps_gradscopes(
    tmp_path, monkeypatch
):
    from gradscope.recorder._kernels import _group_sums

    monkeypatch.setenv("GRADSCOPE_KERNELS", "torch")
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def users_step(x, y):
        return F.cross_entropy(model(x), y)

    rec = gradscope.attach(model, tmp_path / "c.h5", optimizer=opt)
    compiled_step = torch.compile(users_step, backend="eager")
    for step in range(2):
        compiled_step(*vector_batch(step)).backward()
        opt.step()
        opt.zero_grad()
    assert cache_entries(users_step) > 0 and cache_entries(_group_sums) > 0
    rec.close()
    assert cache_entries(users_step) == 0  # it called the hooks: it recompiles without them
    assert cache_entries(_group_sums) > 0
    x, y = vector_batch(9)
    torch.testing.assert_close(compiled_step(x, y), users_step(x, y))
    assert not model[0]._forward_hooks


def hooked(model):
    """The names of the modules of `model` below its root that have a forward hook on (the
    root keeps the flight recorder's, which captures each step's forward calls)."""
    return [name for name, m in model.named_modules() if m._forward_hooks and name]


def beside_a_twin(tmp_path, steps, every, twin_every=1, before_step=None):
    """Train an mlp recorded with `every` beside its twin recorded with `twin_every`, on the
    same batches. `before_step(step, model, twin)` runs before each step and may return what
    to call in place of the model from then on. Returns the two runs (c.h5, eager.h5)."""
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    rec = gradscope.attach(model, tmp_path / "c.h5", optimizer=opt, every=every)
    rec_twin = gradscope.attach(twin, tmp_path / "eager.h5", optimizer=opt_twin, every=twin_every)
    net = model
    for step in range(steps):
        if before_step is not None:
            net = before_step(step, model, twin) or net
        x, y = vector_batch(step)
        for m, o in ((net, opt), (twin, opt_twin)):
            F.cross_entropy(m(x), y).backward()
            o.step()
            o.zero_grad()
        rec.log(loss=float(step))  # the step that the first module's hook saw begin
    rec.close()
    rec_twin.close()
    return gradscope.open_run(tmp_path / "c.h5"), gradscope.open_run(tmp_path / "eager.h5")


def assert_same_records(got, want, steps):
    assert list(got.steps) == steps
    rows = [list(want.steps).index(step) for step in steps]
    for stat in ALL_STATS:
        np.testing.assert_allclose(got.stat(stat), want.stat(stat)[rows], rtol=1e-5, err_msg=stat)


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_between_records_only_the_first_module_keeps_its_forward_hook(
    tmp_path, kernels, monkeypatch
):
    monkeypatch.setenv("GRADSCOPE_KERNELS", kernels)  # torch: its own compiled kernels run
    seen = []

    def look(step, model, twin):
        seen.append(hooked(model))

    got, want = beside_a_twin(tmp_path, 7, every=3, before_step=look)
    every, first = ["0", "2", "4"], ["0"]
    assert seen == [every, first, first, every, first, first, every]
    assert list(got.metrics["loss"].index) == list(range(7))
    assert_same_records(got, want, [0, 3, 6])


def test_a_model_compiled_between_records_is_recorded_in_full(tmp_path):
    seen = []

    def compile_at_step_1(step, model, twin):
        seen.append(hooked(model))
        if step == 1:  # not recorded: all hooks but the first module's are off
            return torch.compile(model, backend="eager")

    got, want = beside_a_twin(tmp_path, 5, every=2, twin_every=2, before_step=compile_at_step_1)
    every = ["0", "2", "4"]
    assert seen == [every, ["0"], every, every, every]  # compiled: they stay on
    assert_same_records(got, want, [0, 2, 4])


def test_forward_hooks_stay_on_when_a_hook_registered_later_may_replace_outputs(tmp_path):
    seen = []

    def double_the_middle_output(step, model, twin):
        if step == 0:  # after the recorders' hooks, which see the Linear's own output
            for net in (model, twin):
                net[2].register_forward_hook(lambda module, inputs, output: output * 2)
        seen.append(hooked(model))

    got, want = beside_a_twin(tmp_path, 5, every=2, before_step=double_the_middle_output)
    assert seen == [["0", "2", "4"]] * 5
    assert_same_records(got, want, [0, 2, 4])


# ----- which forward passes a record covers: zero_grad order, accumulation, skipped steps ------

ORDERS = ("zero-forward-backward", "forward-zero-backward", "accumulate")
ACT_AND_FLOW_STATS = ("act_mean", "act_std", "act_absmax", "act_zero_frac", "act_grad_norm")


def iterate(model, opt, scaler, order, step, micro_batches, poison=False):
    """One training iteration of `model` in `order`; `poison` makes the GradScaler skip it."""

    def forward(micro):
        x, y = vector_batch(step, micro)
        return F.cross_entropy(model(x), y)

    if order == "zero-forward-backward":
        opt.zero_grad()
        scaler.scale(forward(0)).backward()
    elif order == "forward-zero-backward":
        loss = forward(0)
        opt.zero_grad()
        scaler.scale(loss).backward()
    else:  # accumulation over micro-batches, zero_grad only at the start
        opt.zero_grad()
        for micro in range(micro_batches):
            scaler.scale(forward(micro) / micro_batches).backward()
    if poison:
        model[0].weight.grad[0, 0] = float("inf")  # the scaler must skip this step
    scaler.step(opt)
    scaler.update()


def reference_iteration(twin, opt, watched, probe, order, step, micro_batches, scale):
    """The twin's step on the same batches, without the recorder or a scaler: the expected
    record holds exactly the forward passes of this (successful) iteration."""
    probe.clear()
    opt.zero_grad()
    count = micro_batches if order == "accumulate" else 1
    for micro in range(count):
        x, y = vector_batch(step, micro)
        loss = F.cross_entropy(twin(x), y) / count
        (loss * scale).backward()  # output gradients of the scaled loss, as the scaler makes them
    ref = {}
    for name, m in watched.items():
        ref[name] = act_reference(probe.outputs[name], None)
        ref[name]["act_grad_norm"] = act_grad_reference(probe.outputs[name])
        ref[name]["grad_norm"] = grad_reference(m)["grad_norm"] / scale  # unscaled
    for p in twin.parameters():
        p.grad /= scale
    opt.step()
    return ref


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("skip", [None, 1])
def test_record_covers_the_forward_passes_of_its_update(tmp_path, order, skip):
    # Activation statistics must not depend on where zero_grad sits, and a step the GradScaler
    # skips must not leak its forward passes into the next record.
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1000)
    stats = ["grad_norm", *ACT_AND_FLOW_STATS]
    rec = gradscope.attach(model, tmp_path / "r.h5", optimizer=opt, stats=stats, batch_sample=None)
    watched = {name: twin[int(name)] for name in rec.layer_names}
    probe = ReferenceProbe(watched)
    expected = {}
    for it in range(4):
        step = rec.current_step
        scale = scaler.get_scale()
        iterate(model, opt, scaler, order, it, micro_batches=3, poison=it == skip)
        if it != skip:
            ref = reference_iteration(twin, opt_twin, watched, probe, order, it, 3, scale)
            expected[step] = ref
    rec.close()
    probe.remove()
    run = gradscope.open_run(tmp_path / "r.h5")
    assert list(run.steps) == [0, 1, 2] if skip is not None else [0, 1, 2, 3]
    assert_matches(run, expected, stats=stats, rtol=2e-4)
    for stat in ACT_AND_FLOW_STATS:
        assert np.isfinite(run.stat(stat)).all(), stat


def test_only_act_stats_still_drop_a_skipped_step(tmp_path):
    # Without act_grad_norm the recorder still learns when a backward reached each forward.
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    stats = ["act_mean", "act_std", "act_absmax"]
    rec = gradscope.attach(model, tmp_path / "r.h5", optimizer=opt, stats=stats, batch_sample=None)
    watched = {name: twin[int(name)] for name in rec.layer_names}
    probe = ReferenceProbe(watched)
    expected = {}
    for it in range(3):
        step, scale = rec.current_step, scaler.get_scale()
        iterate(model, opt, scaler, "forward-zero-backward", it, 1, poison=it == 1)
        if it != 1:
            expected[step] = reference_iteration(
                twin, opt_twin, watched, probe, "forward-zero-backward", it, 1, scale
            )
    rec.close()
    run = gradscope.open_run(tmp_path / "r.h5")
    assert list(run.steps) == [0, 1]
    assert_matches(run, expected, stats=stats, rtol=2e-4)


def test_attach_twice_or_over_a_file_being_written_is_an_error(tmp_path):
    model = mlp()
    with gradscope.attach(model, tmp_path / "a.h5") as rec:
        with pytest.raises(gradscope.UsageError, match="already watched by the recorder writing"):
            gradscope.attach(model, tmp_path / "b.h5")
        with pytest.raises(gradscope.UsageError, match="'0' is already watched"):
            gradscope.attach(model[0], tmp_path / "c.h5")  # a part of the watched model
        other = mlp()
        with pytest.raises(gradscope.UsageError, match="another recorder in this process"):
            gradscope.attach(other, tmp_path / "a.h5", overwrite=True)
        rec.step()
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "c.h5").exists()
    assert list(gradscope.open_run(tmp_path / "a.h5").steps) == [0]  # intact
    with gradscope.attach(model, tmp_path / "a.h5", overwrite=True):  # closed: now it may
        pass


def test_attach_to_a_path_that_cannot_be_written_fails_at_attach(tmp_path):
    with pytest.raises(gradscope.RunFileError, match="cannot write there"):
        gradscope.attach(mlp(), "/proc/gradscope-test/run.h5")
    with pytest.raises(gradscope.RunFileError, match="is a folder"):
        gradscope.attach(mlp(), tmp_path)
    with pytest.raises(TypeError, match="str or os.PathLike"):
        gradscope.attach(mlp(), 123)
    (tmp_path / "file.h5").write_bytes(b"a file")
    for path in (tmp_path / "file.h5" / "run.h5", tmp_path / "file.h5" / "deeper" / "run.h5"):
        with pytest.raises(gradscope.RunFileError) as caught:
            gradscope.attach(mlp(), path)
        assert str(caught.value) == (
            f"{path}: {tmp_path / 'file.h5'} is a file, not a folder, so nothing can be written "
            "inside it; choose another path"
        )


@pytest.mark.parametrize("bad", [123, None])
def test_open_run_says_what_it_expected(bad):
    with pytest.raises(TypeError, match="open_run needs the path of a run file"):
        gradscope.open_run(bad)


# ----- manual_gradients: optimizer.step(closure), as Lightning calls it --------------------------


def closure_training(tmp_path, steps, accumulate, manual, every=1):
    """Lightning's order: each micro-batch runs forward, zero_grad (first only), backward; the
    last one inside optimizer.step(closure), whose step pre-hook runs before the closure."""
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / f"closure-{manual}.h5"
    rec = gradscope.attach(
        model, path, optimizer=opt, every=every, batch_sample=None, manual_gradients=manual
    )
    watched = {name: twin[int(name)] for name in rec.layer_names}
    probe = ReferenceProbe(watched)
    expected, recorded = {}, []
    for step in range(steps):
        probe.clear()
        changes, rows = [], []
        for micro in range(accumulate):
            x, y = vector_batch(step, micro)

            def closure(micro=micro, x=x, y=y):
                loss = F.cross_entropy(model(x), y)
                if micro == 0:
                    opt.zero_grad()
                loss.backward()
                if micro == accumulate - 1 and manual:
                    recorded.append(rec.read_gradients())  # on_before_optimizer_step
                return loss

            if micro == accumulate - 1:
                opt.step(closure)
            else:
                closure()
            before = parameter_grads(twin)
            F.cross_entropy(twin(x), y).backward()
            changes.append(gradient_change(twin, before))
            rows.append(len(x))
        ref = {name: grad_reference(m) for name, m in watched.items()}
        for name, values in gns_reference(watched, changes, rows).items():
            ref[name].update(values)
        before = {name: weight_copy(m) for name, m in watched.items()}
        opt_twin.step()
        opt_twin.zero_grad()
        for name, m in watched.items():
            ref[name].update(weight_reference(before[name], m))
            ref[name].update(act_reference(probe.outputs[name], None))
            ref[name].update(unit_reference(probe.outputs[name], None, m))
            ref[name]["act_grad_norm"] = act_grad_reference(probe.outputs[name])
        expected[step] = ref
    rec.close()
    probe.remove()
    return gradscope.open_run(path), expected, recorded


def test_manual_gradients_are_read_where_read_gradients_is_called(tmp_path):
    run, expected, recorded = closure_training(tmp_path, steps=3, accumulate=2, manual=True)
    assert list(run.steps) == [0, 1, 2] and recorded == [True, True, True]
    assert run.attrs["attach_args"]["manual_gradients"] is True
    assert_matches(run, expected)


def test_the_step_pre_hook_under_a_closure_sees_the_previous_gradients(tmp_path):
    # Why manual_gradients exists: without it, optimizer.step(closure) records stale gradients.
    run, expected, _ = closure_training(tmp_path, steps=2, accumulate=1, manual=False)
    assert np.isnan(run.stat("grad_norm")[0]).all()  # step 0: no gradient existed yet
    want = [expected[1][name]["grad_norm"] for name in run.layers["name"]]
    assert not np.allclose(run.stat("grad_norm")[1], want, rtol=1e-3)


def test_manual_gradients_with_every_and_misuse(tmp_path):
    _, _, recorded = closure_training(tmp_path, steps=4, accumulate=1, manual=True, every=2)
    assert recorded == [True, False, True, False]
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.attach(model, tmp_path / "auto.h5", optimizer=opt) as rec:
        with pytest.raises(gradscope.UsageError, match="manual_gradients=True"):
            rec.read_gradients()
    rec = gradscope.attach(model, tmp_path / "manual.h5", optimizer=opt, manual_gradients=True)
    x, y = vector_batch(0)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(gradscope.UsageError, match="without rec.read_gradients"):
        opt.step()
    rec.close()


# ----- depth order under activation checkpointing -------------------------------------------------


class Checkpointed(nn.Module):
    """inp, three checkpointed blocks, out: reentrant checkpointing runs the blocks' forward
    under no_grad, then again under grad during the backward."""

    def __init__(self, use_reentrant):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.out = nn.Linear(8, 3)
        self.use_reentrant = use_reentrant

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            if self.use_reentrant is None:
                x = torch.tanh(block(x))
            else:
                x = torch.utils.checkpoint.checkpoint(
                    lambda t, b=block: torch.tanh(b(t)), x, use_reentrant=self.use_reentrant
                )
        return self.out(x)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_depth_is_forward_call_order_under_activation_checkpointing(tmp_path, use_reentrant):
    runs = []
    for mode in (use_reentrant, None):  # None: the same net without checkpointing
        torch.manual_seed(0)
        model = Checkpointed(mode)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.attach(model, tmp_path / f"{mode}.h5", optimizer=opt):
            for step in range(2):
                x, y = vector_batch(step)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
        runs.append(gradscope.open_run(tmp_path / f"{mode}.h5"))
    assert list(runs[0].layers["name"]) == ["inp", "blocks.0", "blocks.1", "blocks.2", "out"]
    assert_same_records(runs[0], runs[1], [0, 1])
