"""The flight recorder: models built to break at a chosen layer, pass and step, recorded with
every=50 so the step is never scheduled; the replay must name the origin and change nothing."""

import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from tests.reference import ReferenceProbe, act_grad_reference, act_reference, grad_reference

BREAK_AT = 3  # the optimizer step (never a scheduled record: every=EVERY)
EVERY = 50


class NaNGradient(torch.autograd.Function):
    """Identity forward; its backward makes NaN from a finite gradient (0 / 0)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        zero = grad - grad
        return zero / zero


class Breaking(nn.Linear):
    """A Linear that, while `broken`, makes an inf in its forward (`kind="forward"`: its output
    times 1e30 twice), a NaN in its backward for its input ("backward"), or a NaN in its
    weight's gradient alone ("parameter")."""

    def __init__(self, width: int, kind: str):
        super().__init__(width, width)
        self.kind = kind
        self.broken = False

    def forward(self, x):
        if not self.broken or self.kind == "none":
            return super().forward(x)
        if self.kind == "forward":
            return super().forward(x) * 1e30 * 1e30
        if self.kind == "backward":
            return super().forward(NaNGradient.apply(x))
        return F.linear(x, NaNGradient.apply(self.weight), self.bias)


class Net(nn.Module):
    """inp -> mid -> brk (Breaking) -> out, tanh between but relu after brk (which lets an inf
    through); `drop` adds dropout before brk, `norm` a BatchNorm after mid. A batch marked
    `x.breaks = True` breaks brk: a bad batch, as a replay sees it again."""

    def __init__(self, kind: str = "forward", drop: float = 0.0, norm: bool = False):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.mid = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8) if norm else nn.Identity()
        self.drop = nn.Dropout(drop)
        self.brk = Breaking(8, kind)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        self.brk.broken = getattr(x, "breaks", False)
        h = torch.tanh(self.norm(self.mid(torch.tanh(self.inp(x)))))
        return self.out(torch.relu(self.brk(self.drop(h))))


def batch(step, micro=0, n=8):
    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def train(model, opt, steps, *, micro_batches=1, on_batch=None, loss_fn=None):
    """Plain training; `on_batch(step, micro, x)` may change or mark the batch."""
    for step in range(steps):
        for micro in range(micro_batches):
            x, y = batch(step, micro)
            if on_batch is not None:
                x = on_batch(step, micro, x)
            out = model(x)
            loss = (loss_fn or F.cross_entropy)(out, y) / micro_batches
            loss.backward()
        opt.step()
        opt.zero_grad()


def break_at(step_wanted=BREAK_AT, micro_wanted=None):
    """An `on_batch` that marks the batch of one step (and micro-batch) as one that breaks."""

    def on_batch(step, micro, x):
        if step == step_wanted and micro_wanted in (None, micro):
            x = x.clone()
            x.breaks = True
        return x

    return on_batch


def recorded(tmp_path, model, steps=BREAK_AT + 2, name="run.h5", **kwargs):
    """Train `model` recorded every=EVERY (watch mode unless told), breaking at BREAK_AT;
    returns the run and its non-finite events."""
    opt = kwargs.pop("opt", None) or torch.optim.SGD(model.parameters(), lr=0.05)
    options = {k: kwargs.pop(k) for k in ("on_batch", "micro_batches", "loss_fn") if k in kwargs}
    options.setdefault("on_batch", break_at())
    path = tmp_path / name
    with pytest.warns(RuntimeWarning, match="gradscope: step"):
        with gradscope.attach(model, path, optimizer=opt, every=EVERY, **kwargs):
            train(model, opt, steps, **options)
    run = gradscope.open_run(path)
    return run, run.events[run.events["kind"] == "nonfinite"]


def origin_of(events):
    """The first event: the origin of the trip."""
    assert len(events), "no non-finite event stored"
    return events.iloc[0]


# ----- where the first non-finite value appears ------------------------------------------------


def test_forward_origin_named_with_its_op_and_recorded_in_full(tmp_path):
    torch.manual_seed(0)
    run, events = recorded(tmp_path, Net("forward"))
    origin = origin_of(events)
    assert (origin["step"], origin["phase"], origin["layer"]) == (BREAK_AT, "forward", "brk")
    assert origin["op"] == "aten.mul" and origin["op_dtype"] == "float32"
    assert 1e28 < origin["op_absmax"] < 1e31  # the product's finite input, before it overflowed
    assert re.fullmatch(
        rf"step {BREAK_AT}: first non-finite value in the forward pass of brk \(Breaking\), "
        r"aten\.mul, input absmax \d\.\d\de29 \(float32\)",
        origin["message"],
    )
    assert origin["update"] == "applied" and origin["recorded"]
    assert list(run.steps) == [0, BREAK_AT]  # the trip step recorded whatever the schedule
    frame = run.record_frame(BREAK_AT)
    assert frame.loc[["inp", "mid"], "act_absmax"].map(math.isfinite).all()
    assert math.isinf(frame.loc["brk", "act_absmax"])
    assert frame["act_zero_frac"].notna().all() and (frame["grad_nonfinite"] > 0).all()


def test_backward_origin_is_the_module_whose_backward_made_it(tmp_path):
    torch.manual_seed(0)
    _, events = recorded(tmp_path, Net("backward"))
    origin = origin_of(events)
    assert (origin["phase"], origin["layer"], origin["op"]) == ("backward", "brk", "aten.div")
    assert (
        "the backward pass of brk (Breaking), aten.div, input absmax 0 (float32)"
        in (origin["message"])
    )
    assert "an unwatched operation between mid and brk may be the cause" in origin["message"]


def test_parameter_gradient_origin(tmp_path):
    torch.manual_seed(0)
    _, events = recorded(tmp_path, Net("parameter"))
    origin = origin_of(events)
    assert (origin["phase"], origin["layer"], origin["op"]) == (
        "parameter_gradient",
        "brk",
        "aten.div",
    )


def test_loss_origin(tmp_path):
    torch.manual_seed(0)
    model = Net()

    def log_zero_at_break(out, y):  # log(0) in the loss at BREAK_AT
        loss = F.cross_entropy(out, y)
        return loss + torch.log(out.sum() * 0) if model.brk.broken else loss

    model.brk.kind = "none"  # the model stays whole: only the loss reads the mark
    _, events = recorded(tmp_path, model, loss_fn=log_zero_at_break)
    origin = origin_of(events)
    assert (origin["phase"], origin["layer"], origin["op"]) == ("loss", None, None)
    assert "the gradient reaching the model's outputs is not" in origin["message"]


def test_input_origin(tmp_path):
    torch.manual_seed(0)
    model = Net()

    def nan_batch(step, micro, x):
        if step == BREAK_AT:
            x = x.clone()
            x[2, 3] = float("nan")
        return x

    _, events = recorded(tmp_path, model, on_batch=nan_batch)
    origin = origin_of(events)
    assert (origin["phase"], origin["layer"]) == ("input", None)
    assert origin["message"] == f"step {BREAK_AT}: the input batch holds a non-finite value"


def test_accumulation_names_the_micro_batch(tmp_path):
    torch.manual_seed(0)
    model = Net("forward")
    run, events = recorded(tmp_path, model, micro_batches=4, on_batch=break_at(micro_wanted=2))
    origin = origin_of(events)
    assert (origin["phase"], origin["layer"]) == ("forward", "brk")
    assert (origin["micro_batch"], origin["micro_batches"]) == (3, 4)
    assert "(micro-batch 3 of 4)" in origin["message"]


def test_a_weight_made_non_finite_by_the_update_is_reported_once(tmp_path):
    torch.manual_seed(0)
    _, events = recorded(tmp_path, Net("forward"), steps=BREAK_AT + 3)
    # the update of the trip step ran (watch): the weights are non-finite from then on
    assert list(events["phase"]) == ["forward", "weight"]
    assert list(events["step"]) == [BREAK_AT, BREAK_AT + 1]
    assert events.iloc[1]["layer"] == "inp"  # the first in depth order


# ----- the replay changes nothing ----------------------------------------------------------------


def twin_step(twin, opt, probe, x, y, seed):
    """The twin's step (no recorder), after `torch.manual_seed(seed)`: reference statistics."""
    probe.clear()
    torch.manual_seed(seed)
    F.cross_entropy(twin(x), y).backward()
    ref = {}
    for name, m in probe.modules.items():
        ref[name] = grad_reference(m) | act_reference(probe.outputs[name], None)
        ref[name]["act_grad_norm"] = act_grad_reference(probe.outputs[name])
    opt.step()
    opt.zero_grad()
    return ref


@pytest.mark.parametrize(
    "drop, norm, kernels",
    [(0.5, False, "auto"), (0.0, True, "torch")],
    ids=["dropout", "batchnorm-device-path"],
)
def test_the_replay_reproduces_the_step_and_leaves_everything_as_it_was(
    tmp_path, monkeypatch, drop, norm, kernels
):
    # The parameter-gradient break leaves the forward finite, so every activation statistic of
    # the trip record (made by the replay alone: the step is not scheduled) must equal the
    # twin's: dropout masks come from the captured generator states, BatchNorm normalizes by
    # the same batch statistics. GRADSCOPE_KERNELS=torch: the record as a GPU makes it.
    monkeypatch.setenv("GRADSCOPE_KERNELS", kernels)
    torch.manual_seed(0)
    model = Net("parameter", drop=drop, norm=norm)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    path = tmp_path / "run.h5"
    rec = gradscope.attach(model, path, optimizer=opt, every=EVERY, batch_sample=None)
    probe = ReferenceProbe({name: getattr(twin, name) for name in rec.layer_names})
    for step in range(BREAK_AT + 1):
        x, y = break_at()(step, 0, batch(step)[0]), batch(step)[1]
        torch.manual_seed(step)
        F.cross_entropy(model(x), y).backward()
        grads = [(p.grad, p.grad.clone()) for p in model.parameters()]
        buffers = [b.clone() for b in model.buffers()]
        rng = torch.get_rng_state()
        if step == BREAK_AT:
            with pytest.warns(RuntimeWarning, match="parameter gradient of brk"):
                opt.step()
        else:
            opt.step()
        assert torch.equal(torch.get_rng_state(), rng)
        for p, (grad, value) in zip(model.parameters(), grads, strict=True):
            assert p.grad is grad  # the same tensor, with the same values
            torch.testing.assert_close(grad, value, equal_nan=True, rtol=0, atol=0)
        for now, before in zip(model.buffers(), buffers, strict=True):
            assert torch.equal(now, before)
        opt.zero_grad()
        expected = twin_step(twin, opt_twin, probe, x, y, step)
    rec.close()
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, BREAK_AT]
    assert run.events.iloc[0]["phase"] == "parameter_gradient"
    frame = run.record_frame(BREAK_AT)
    for stat in ("act_mean", "act_std", "act_absmax", "act_zero_frac", "act_grad_norm"):
        want = [expected[name][stat] for name in frame.index]
        np.testing.assert_allclose(frame[stat], want, rtol=1e-4, atol=1e-6, err_msg=stat)
    want = [expected[name]["grad_nonfinite"] for name in frame.index]
    np.testing.assert_array_equal(frame["grad_nonfinite"], want)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, equal_nan=True)  # the update ran as the twin's


# ----- what each mode does ---------------------------------------------------------------------


def test_raise_mode_raises_before_the_update_and_the_run_goes_on(tmp_path):
    torch.manual_seed(0)
    model = Net("forward")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    path = tmp_path / "run.h5"
    rec = gradscope.attach(model, path, optimizer=opt, every=EVERY, nonfinite="raise")
    train(model, opt, BREAK_AT)
    x, y = batch(BREAK_AT)
    F.cross_entropy(model(break_at()(BREAK_AT, 0, x)), y).backward()
    weights = [p.detach().clone() for p in model.parameters()]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    with pytest.raises(gradscope.NonFiniteError) as raised:
        opt.step()
    error = raised.value
    assert isinstance(error, gradscope.GradscopeError)
    assert (error.step, error.phase, error.layer, error.op) == (
        BREAK_AT,
        "forward",
        "brk",
        "aten.mul",
    )
    assert "the update was not applied" in str(error) and "forward pass of brk" in str(error)
    for p, before, buffer in zip(model.parameters(), weights, momentum, strict=True):
        assert torch.equal(p, before) and torch.equal(opt.state[p]["momentum_buffer"], buffer)
    assert rec.current_step == BREAK_AT + 1  # the step keeps its number and its record
    opt.zero_grad()
    x, y = batch(BREAK_AT + 1)
    F.cross_entropy(model(x), y).backward()
    opt.step()  # training goes on
    rec.close()
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, BREAK_AT]
    assert list(run.events["update"]) == ["raised"]  # no AMP overflow counted at zero_grad


def test_skip_mode_skips_the_update_and_counts_it(tmp_path):
    torch.manual_seed(0)
    model = Net("forward")
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    path = tmp_path / "run.h5"
    with pytest.warns(RuntimeWarning, match="forward pass of brk"):
        with gradscope.attach(model, path, optimizer=opt, every=EVERY, nonfinite="skip") as rec:
            train(model, opt, BREAK_AT + 3, on_batch=break_at())
            assert rec.current_step == BREAK_AT + 3
    for step in range(BREAK_AT + 3):  # the twin leaves the bad batch out altogether
        if step != BREAK_AT:
            train_one(twin, opt_twin, step)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"], opt_twin.state[q]["momentum_buffer"], rtol=0, atol=0
        )
    run = gradscope.open_run(path)
    assert list(run.events["update"]) == ["skipped"]
    assert list(run.steps) == [0, BREAK_AT]
    assert (run.record_frame(BREAK_AT)["update_ratio"] == 0).all()


def train_one(model, opt, step):
    x, y = batch(step)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("manual", [False, True], ids=["step-hook", "read_gradients"])
def test_amp_overflows_are_counted_never_raised_and_a_nan_reaching_an_update_is(tmp_path, manual):
    # manual: read_gradients() after unscaling, before optimizer.step(), as the Lightning and
    # Hugging Face callbacks call it; a GradScaler may still skip the update after it.
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    path = tmp_path / "run.h5"
    rec = gradscope.attach(
        model, path, optimizer=opt, every=EVERY, nonfinite="raise", manual_gradients=manual
    )
    for it in range(5):
        x, y = batch(it)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        scaler.scale(F.cross_entropy(out.float(), y)).backward()
        if it in (1, 2):
            model.inp.weight.grad[0, 0] = float("inf")  # an overflow: the scaler skips
        scaler.unscale_(opt)
        if it == 4:  # after the scaler's check: this one reaches the update
            model.out.bias.grad[1] = float("nan")
        if manual:
            rec.read_gradients()
        if it == 4:
            with pytest.raises(gradscope.NonFiniteError) as raised:
                scaler.step(opt)
            assert raised.value.phase == "unreproduced" and raised.value.step == 2
            assert "gradients changed after the backward" in str(raised.value)
            assert "out (1)" in str(raised.value)
        else:
            scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    rec.close()
    events = gradscope.open_run(path).events
    assert list(events["kind"]) == ["amp_overflow", "amp_overflow", "nonfinite"]
    assert list(events["step"]) == [1, 1, 2]  # skipped updates are not optimizer steps


# ----- with what users train -------------------------------------------------------------------


def test_a_compiled_model_is_replayed_eagerly(tmp_path):
    torch.manual_seed(0)
    model = Net("forward")
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.h5"
    with pytest.warns(RuntimeWarning, match="forward pass of brk"):
        with gradscope.attach(compiled, path, optimizer=opt, every=EVERY):
            train(compiled, opt, BREAK_AT + 1, on_batch=break_at())
    origin = origin_of(gradscope.open_run(path).events)
    assert (origin["phase"], origin["layer"], origin["op"]) == ("forward", "brk", "aten.mul")


def test_attached_inside_a_compiled_model_the_trip_says_how_to_replay_it(tmp_path):
    torch.manual_seed(0)
    model = Net("forward")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.h5"
    with pytest.warns(RuntimeWarning, match="attach gradscope to that module"):
        with gradscope.attach(model, path, optimizer=opt, every=EVERY):
            compiled = torch.compile(model, backend="eager")  # the capture's hooks trace as nothing
            train(compiled, opt, BREAK_AT + 1, on_batch=break_at())
    origin = origin_of(gradscope.open_run(path).events)
    assert (origin["step"], origin["phase"]) == (BREAK_AT, "not_replayed")


def test_a_closure_and_manual_gradients_as_lightning_steps(tmp_path):
    # optimizer.step(closure): the step pre-hook runs before the closure's backward, so the
    # check runs in read_gradients() (Lightning's on_before_optimizer_step) and acts at once.
    torch.manual_seed(0)
    model = Net("backward")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.h5"
    rec = gradscope.attach(
        model, path, optimizer=opt, every=EVERY, manual_gradients=True, nonfinite="raise"
    )
    for step in range(BREAK_AT + 1):
        x, y = batch(step)
        x = break_at()(step, 0, x)

        def closure(x=x, y=y):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            rec.read_gradients()
            return loss

        if step < BREAK_AT:
            opt.step(closure)
        else:
            with pytest.raises(gradscope.NonFiniteError, match="backward pass of brk"):
                opt.step(closure)
    rec.close()


def test_a_replay_that_fails_is_said_and_training_goes_on(tmp_path):
    torch.manual_seed(0)
    model = Net("forward")
    forward = model.forward

    def once_per_batch(x):  # Python state a replay cannot put back
        if getattr(x, "seen", False):
            raise RuntimeError("this batch was seen before")
        x.seen = True
        return forward(x)

    model.forward = once_per_batch
    run, events = recorded(tmp_path, model)
    origin = origin_of(events)
    assert (origin["phase"], origin["recorded"]) == ("not_replayed", True)
    assert "replaying it failed (RuntimeError: this batch was seen before)" in origin["message"]
    assert list(run.steps) == [0, BREAK_AT]
    assert run.record_frame(BREAK_AT)["act_mean"].isna().all()  # no activations: no replay
    assert (run.record_frame(BREAK_AT)["grad_nonfinite"] > 0).any()


def test_without_an_optimizer_the_trip_is_stored_not_replayed(tmp_path):
    torch.manual_seed(0)
    model = Net("forward")
    with pytest.raises(gradscope.UsageError, match='nonfinite="skip" needs optimizer='):
        gradscope.attach(model, tmp_path / "x.h5", nonfinite="skip")
    with pytest.raises(gradscope.UsageError, match="nonfinite must be one of"):
        gradscope.attach(model, tmp_path / "x.h5", nonfinite="loud")
    path = tmp_path / "run.h5"
    rec = gradscope.attach(model, path, every=EVERY, nonfinite="raise")
    for step in range(BREAK_AT + 1):
        x, y = batch(step)
        F.cross_entropy(model(break_at()(step, 0, x)), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
                p.grad = None
        if step < BREAK_AT:
            rec.step()
        else:
            with pytest.raises(gradscope.NonFiniteError, match="not replayed: it was found after"):
                rec.step()
    rec.close()
    assert gradscope.open_run(path).events.iloc[0]["phase"] == "not_replayed"


def test_resume_after_a_trip(tmp_path):
    # A run stopped by a trip resumes from its checkpoint before the bad step: the old
    # timeline's steps from there on (the trip record and its event) make way for the new one,
    # and the flight recorder works on.
    torch.manual_seed(0)
    model = Net("forward")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.h5"
    rec = gradscope.attach(model, path, optimizer=opt, every=2, nonfinite="raise")
    train(model, opt, BREAK_AT)
    checkpoint = copy.deepcopy((model.state_dict(), opt.state_dict()))
    x, y = batch(BREAK_AT)
    F.cross_entropy(model(break_at()(BREAK_AT, 0, x)), y).backward()
    with pytest.raises(gradscope.NonFiniteError):
        opt.step()
    rec.close()
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, 2, BREAK_AT] and list(run.events["step"]) == [BREAK_AT]
    model.load_state_dict(checkpoint[0])
    opt.load_state_dict(checkpoint[1])
    opt.zero_grad()
    later = BREAK_AT + 2  # not a scheduled step either
    resumed = gradscope.attach(
        model, path, optimizer=opt, every=2, resume=True, start_step=BREAK_AT
    )
    assert resumed.current_step == BREAK_AT
    with pytest.warns(RuntimeWarning, match=f"step {later}: first non-finite"), resumed:
        for step in range(BREAK_AT, later + 1):
            x, y = batch(step)
            F.cross_entropy(model(break_at(later)(step, 0, x)), y).backward()
            opt.step()
            opt.zero_grad()
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, 2, 4, later]
    assert list(run.events["step"]) == [later]


def test_the_check_reads_only_and_sees_inf_and_nan_without_overflow(monkeypatch):
    from gradscope.recorder._nonfinite_check import NonFiniteCheck

    layer = nn.Linear(4, 3)
    layer(torch.randn(2, 4)).sum().backward()
    check = NonFiniteCheck(list(layer.parameters()), reduce_across_ranks=False, device="cpu")
    versions = [(p._version, p.grad._version) for p in layer.parameters()]
    orders = []
    foreach_norm = torch._foreach_norm

    def counted(tensors, order):
        orders.append(order)
        return foreach_norm(tensors, order)

    monkeypatch.setattr(torch, "_foreach_norm", counted)
    assert not check.any_nonfinite()
    assert orders == [2]  # a step that is fine: one 2-norm pass, no max-norm
    with torch.no_grad():
        layer.weight.grad[0, 0] = 1e30  # finite: its square overflows the 2-norm ...
    assert not check.any_nonfinite()
    assert orders[1:] == [2, math.inf]  # ... which the max-norm pass does not confirm
    for bad in (math.inf, math.nan):
        with torch.no_grad():
            layer.bias.grad[1] = bad
        assert check.any_nonfinite()
        with torch.no_grad():
            layer.bias.grad[1] = 0.0
    with torch.no_grad():
        layer.weight[2, 3] = math.nan
    assert check.any_nonfinite() and not check.any_nonfinite(weights=False)
    # nothing was written by the checks: the version counters moved only for the test's writes
    assert layer.weight._version == versions[0][0] + 1
    assert layer.bias.grad._version == versions[1][1] + 4
