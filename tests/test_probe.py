"""gradscope.probe and `gradscope probe`: statistics at init against brute-force references,
the model left as it was, the known differences (ResNet vs plain, post-LN vs pre-LN, SP vs
muP across widths), and the probe file as the rest of gradscope reads it."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock as TorchvisionBlock

import gradscope
from gradscope._probe._inputs import step_generator
from gradscope.cli import main as cli_main
from gradscope.errors import UsageError
from gradscope.models import BasicBlock, create_model
from gradscope.store import probe_info, probe_layout, probe_values, width_exponents
from tests.probe_models import (
    Transformer,
    mlp_batches,
    mup_mlp,
    mup_sgd,
    sp_mlp,
    sp_sgd,
)
from tests.reference import (
    ReferenceProbe,
    act_grad_reference,
    average_channel_variance_reference,
    channel_reference,
    grad_reference,
    weight_copy,
    weight_reference,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class CustomBlock(nn.Module):
    """A residual block of a user's own: relu(x + norm(conv(x)))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.norm(self.conv(x)))


class SmallNet(nn.Module):
    """A stem, gradscope's residual block (projection skip), torchvision's (identity skip, in-
    place add and ReLU), a custom residual block, and a head whose first 4 units never fire."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.ours = BasicBlock(4, 8, stride=2, shortcut="B")
        self.theirs = TorchvisionBlock(8, 8)
        self.custom = CustomBlock(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(8, 5)
        with torch.no_grad():
            self.fc1.bias[:4] = -1e3  # dead: these units are negative for every input

    def forward(self, x):
        x = self.custom(self.theirs(self.ours(self.stem(x))))
        return self.fc2(self.relu(self.fc1(torch.flatten(self.pool(x), 1))))


CUSTOM = {CustomBlock: ("norm", None)}
SGD_SETTINGS = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}


def small_batch(seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 8, 8, generator=generator), torch.randint(5, (6,), generator=generator)


def reference_probe(model, optimizer, batch, names):
    """Every statistic of the probe file by brute force, on a copy of model and optimizer."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), **SGD_SETTINGS)
    opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    modules = dict(model.named_modules())
    kept = ReferenceProbe({name: modules[name] for name in names})
    parts = {
        "ours.bn2": model.ours.bn2,
        "ours.downsample": model.ours.downsample,
        "theirs.bn2": model.theirs.bn2,
        "custom.norm": model.custom.norm,
    }
    branch = ReferenceProbe(parts)
    inputs = {}
    for name in ("theirs", "custom"):
        modules[name].register_forward_pre_hook(
            lambda m, args, name=name: inputs.__setitem__(name, args[0].detach().clone())
        )
    for p in model.parameters():
        p.grad = None
    x, y = batch
    F.cross_entropy(model(x), y).backward()
    before = {name: weight_copy(modules[name]) for name in names}
    grads = {name: grad_reference(modules[name]) for name in names}
    opt.step()
    out = {}
    for name in names:
        cdim = None if kept.outputs[name][0][0][1].dim() < 2 else 1
        out[name] = {
            **channel_reference(kept.outputs[name], cdim),
            "act_grad_norm": act_grad_reference(kept.outputs[name]),
            "grad_norm": grads[name]["grad_norm"],
            **weight_reference(before[name], modules[name]),
        }
        del out[name]["weight_frozen_frac"]  # not a statistic the probe records

    def variance(part):
        return average_channel_variance_reference(branch.outputs[part][0][0][1])

    skips = {
        "ours": variance("ours.downsample"),
        "theirs": average_channel_variance_reference(inputs["theirs"]),
        "custom": average_channel_variance_reference(inputs["custom"]),
    }
    for block, part in (("ours", "ours.bn2"), ("theirs", "theirs.bn2"), ("custom", "custom.norm")):
        out[block].update(
            res_var=variance(part), skip_var=skips[block], res_ratio=variance(part) / skips[block]
        )
    return out


def test_probe_statistics_equal_a_brute_force_reference_and_the_model_is_left_as_it_was(
    tmp_path,
):
    torch.manual_seed(0)
    model = SmallNet()
    model.custom.norm.eval()  # a module in eval mode stays so
    opt = torch.optim.SGD(model.parameters(), **SGD_SETTINGS)
    F.cross_entropy(model(small_batch(9)[0]), small_batch(9)[1]).backward()
    opt.step()  # the optimizer has momentum buffers, the model gradients: both must survive
    batch = small_batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [(p.grad, p.grad.clone()) for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    opt_state = copy.deepcopy(opt.state_dict())
    rng = torch.get_rng_state()

    reference_model = copy.deepcopy(model)
    reference_model.custom.norm.train()  # the probe measures in train mode
    path = tmp_path / "small.h5"
    probe = gradscope.probe(model, batch, path=path, optimizer=opt, residual_branches=CUSTOM)

    # left as it was
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    for p, (grad, value) in zip(model.parameters(), grads, strict=True):
        assert p.grad is grad and torch.equal(grad, value)
    assert [m.training for m in model.modules()] == modes
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for key, saved in opt_state["state"].items():
        assert torch.equal(saved["momentum_buffer"], after["state"][key]["momentum_buffer"])
    assert torch.equal(torch.get_rng_state(), rng)

    # the file: every statistic as computed by hand
    names = list(probe.layers["name"])
    info = probe_info(probe)
    assert info["residual_blocks"] == ["ours", "theirs", "custom"]
    assert set(info["blocks"]) == {"ours", "theirs", "custom"}
    assert {"stem", "ours.conv1", "theirs.relu", "relu", "fc2"} <= set(names)
    expected = reference_probe(reference_model, opt, batch, names)
    frame = probe.record_frame()
    for name, values in expected.items():
        for stat, value in values.items():
            if stat == "act_grad_norm" and name.startswith("theirs."):
                continue  # torchvision's in-place add and ReLU: retain_grad sees the new value
            got = float(frame.loc[name, stat])
            assert got == pytest.approx(value, rel=2e-4, abs=1e-6, nan_ok=True), (name, stat)
    dead_share = float(frame.loc["relu", "dead_frac"])
    assert dead_share >= 0.5  # the 4 units biased far below zero (and any that never fired)
    assert np.isnan(frame.loc["relu", "grad_norm"]) and np.isnan(frame.loc["stem", "res_var"])

    diagnosis = gradscope.diagnose(probe)
    dead = [f for f in diagnosis.findings if f.kind == "dead_at_init"]
    assert [(f.layer, f.value) for f in dead] == [("relu", dead_share)]
    assert "no_gradient" not in {f.kind for f in diagnosis.findings}  # ReLUs, blocks: no params
    assert diagnosis.to_text().startswith("diagnosis at initialization of ")
    probe.close()


def test_resnet56_and_plain56_show_the_known_difference_and_plain56_is_flagged(tmp_path, capsys):
    code = cli_main(["probe", "resnet56", "plain56", "--batch-size", "8", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    resnet, plain = out.split(f"probe file: {tmp_path / 'plain56.h5'}")
    assert "27 of them residual" in resnet and "no problems found" in resnet
    assert "signal_exploding_depth (1):" in plain and "0 of them residual" in plain
    assert f"--figure spp --out {tmp_path / 'spp.png'}" in out
    decades = {}
    for name in ("resnet56", "plain56"):
        # by hand: the same seeded model and Gaussian batch, plain autograd
        torch.manual_seed(0)
        model = create_model(name).train()
        x = torch.randn((8, 3, 32, 32), generator=step_generator(0, 0))
        kept = ReferenceProbe({"conv1": model.conv1, "fc": model.fc})
        logits = model(x)
        y = torch.randint(10, (8,), generator=step_generator(1, 0))
        F.cross_entropy(logits, y).backward()
        hand = act_grad_reference(kept.outputs["conv1"]) / act_grad_reference(kept.outputs["fc"])
        with gradscope.open_run(tmp_path / f"{name}.h5") as probe:
            signal = probe.record_frame()["act_grad_norm"]
            assert signal["conv1"] / signal["fc"] == pytest.approx(hand, rel=1e-4)
            decades[name] = math.log10(gradscope.diagnose(probe).signal_ratio)
    assert 0.5 < decades["resnet56"] < 1.5  # about one decade towards the input
    assert 2.5 < decades["plain56"] < 3.6  # three


def test_a_resnet_without_normalization_has_dominating_branches_and_exploding_activations():
    # Brock et al. 2021: without normalization, He-initialised branches as large as their skip
    # double the variance block after block
    torch.manual_seed(0)
    model = create_model("resnet56", width=4)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())
    with gradscope.probe(model, batch_size=8) as probe:
        frame = probe.record_frame()
        blocks = probe_info(probe)["residual_blocks"]
        findings = {f.kind: f for f in gradscope.diagnose(probe).findings}
    ratios = frame.loc[blocks, "res_ratio"]
    assert findings["residual_dominates"].value == pytest.approx(float(np.median(ratios)))
    assert findings["residual_dominates"].value > 1
    growth = math.sqrt(frame.loc[blocks[-1], "chan_var"] / frame.loc[blocks[0], "chan_var"])
    assert findings["activations_exploding_depth"].value == pytest.approx(growth, rel=1e-5)
    assert growth > 100


def test_post_ln_gradients_near_the_output_are_larger_than_pre_ln_ones():
    # Xiong et al. 2020: at initialization the gradient of the last layers' weights is
    # O(d sqrt(ln d)) in post-LN, O(d sqrt(ln d / L)) in pre-LN; and grows with the layer
    # index in post-LN, but not in pre-LN.
    grad = {}
    for pre_ln in (False, True):
        torch.manual_seed(0)
        model = Transformer(pre_ln)
        generator = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 8, 32, generator=generator), torch.randint(10, (8, 8))
        probe = gradscope.probe(model, (x, y), name="pre-LN" if pre_ln else "post-LN")
        frame = probe.record_frame()
        reference = copy.deepcopy(model).train()
        F.cross_entropy(reference(x).reshape(-1, 10), y.reshape(-1)).backward()
        for layer in (0, 11):
            name = f"encoder.layers.{layer}.linear2"
            by_hand = grad_reference(reference.get_submodule(name))["grad_norm"]
            assert frame.loc[name, "grad_norm"] == pytest.approx(by_hand, rel=1e-4)
            grad[pre_ln, layer] = by_hand
        assert "TransformerEncoderLayer" in probe_info(probe)["blocks_found"]
        probe.close()
    assert grad[False, 11] > 2 * grad[True, 11]  # post-LN's near the output: ~sqrt(12) larger
    assert grad[False, 11] > grad[False, 0]  # post-LN: grows towards the output
    assert grad[True, 11] < grad[True, 0]  # pre-LN: does not


def mlp_by_hand(factory, optimizer, widths, steps):
    """mean |output| of each layer at sweep step `steps`, per width: trained by plain loops."""
    values = []
    for width in widths:
        torch.manual_seed(0)
        model = factory(width)
        opt = optimizer(model)
        batches = mlp_batches()
        outputs = {}
        handles = [
            m.register_forward_hook(
                lambda m, i, o, name=name, kept=outputs: kept.__setitem__(name, o.detach().clone())
            )
            for name, m in model.named_children()
        ]
        for step in range(steps + 1):  # the last forward's outputs stay in `outputs`
            x, y = batches(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        for handle in handles:
            handle.remove()
        values.append([outputs[name].abs().double().mean().item() for name in outputs])
    return np.array(values)


@pytest.mark.parametrize(
    "factory, optimizer, flagged",
    [(sp_mlp, sp_sgd(1.0), True), (mup_mlp, mup_sgd(3.0), False)],
    ids=["standard parametrization", "muP"],
)
def test_width_sweep_flags_the_standard_parametrization_and_not_mup(factory, optimizer, flagged):
    widths, steps = [64, 128, 256, 512], 3
    probe = gradscope.probe(factory, mlp_batches(), steps=steps, widths=widths, optimizer=optimizer)
    assert probe_layout(probe).widths == tuple(widths)
    assert list(probe.steps) == list(range(len(widths) * (steps + 1)))
    metrics = probe.metrics
    assert list(metrics["width"]) == [w for w in widths for _ in range(steps + 1)]
    assert list(metrics["probe_step"]) == list(range(steps + 1)) * len(widths)
    _, values = probe_values(probe, "act_abs_mean", steps)
    by_hand = mlp_by_hand(factory, optimizer, widths, steps)
    assert list(probe.layers["name"]) == ["input", "act1", "hidden", "act2", "readout"]
    np.testing.assert_allclose(values, by_hand, rtol=1e-4)

    findings = gradscope.diagnose(probe).findings
    unstable = {f.layer: f.value for f in findings if f.kind.startswith("width_")}
    slopes = width_exponents(widths, by_hand)
    limit = gradscope.diagnosis.Thresholds().width_exponent
    assert unstable == pytest.approx(
        {name: s for name, s in zip(probe.layers["name"], slopes, strict=True) if abs(s) > limit}
    )
    if flagged:  # its hidden layer and readout grow with width (its second ReLU dies off)
        assert unstable["hidden"] > 0.5 and unstable["readout"] > 0.3 and unstable["act2"] < -0.5
    else:
        assert not unstable and np.abs(slopes).max() < 0.15
    probe.close()


def test_probe_refuses_what_it_cannot_do(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(UsageError, match="callable building the model"):
        gradscope.probe(model, widths=[8, 16])
    with pytest.raises(UsageError, match="with widths=, pass optimizer as a callable"):
        gradscope.probe(sp_mlp, widths=[8, 16], optimizer=torch.optim.SGD(model.parameters()))
    with pytest.raises(UsageError, match="at least two distinct"):
        gradscope.probe(sp_mlp, widths=[8])
    with pytest.raises(UsageError, match=r"pass input_shape=\(...\)"):
        gradscope.probe(nn.Sequential(nn.Conv2d(3, 4, 3)))
    (tmp_path / "run.h5").write_bytes(b"not a probe")
    with pytest.raises(UsageError, match="not a probe file"):
        gradscope.probe(model, path=tmp_path / "run.h5")
    with pytest.raises(UsageError, match="residual_branches: 'nothing.*' matches no module"):
        gradscope.probe(model, residual_branches={"nothing.*": ("0", None)})
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error, exit code 2
        cli_main(["probe", "resnet20", "--widths", "8"])
    assert exit_info.value.code == 2
    two_into_one = ["probe", "resnet20", "plain20", "--out", str(tmp_path / "one.h5")]
    assert cli_main(two_into_one) == 2
    # a probe file is replaced; the Gaussian batch's shape comes from the first Linear
    first = gradscope.probe(model, path=tmp_path / "p.h5", batch_size=4)
    first.close()
    again = gradscope.probe(model, path=tmp_path / "p.h5", batch_size=4, seed=1)
    assert probe_info(again)["seed"] == 1 and probe_info(again)["batch_size"] == 4
    again.close()


def test_inspect_reads_a_probe_file(tmp_path, capsys):
    with gradscope.probe(create_model("resnet20", width=4), batch_size=4, path=tmp_path / "r.h5"):
        pass
    assert cli_main(["inspect", str(tmp_path / "r.h5")]) == 0
    out = capsys.readouterr().out
    assert "diagnosis at initialization of " in out and "chan_var" in out
