"""Tests for gradscope.models: registry, CIFAR ResNet / plain nets, torchvision ResNets, summary."""

import math

import pytest
import torch
import torch.nn as nn

from gradscope.errors import UsageError
from gradscope.models import (
    CifarResNet,
    count_parameters,
    create_model,
    get_model_spec,
    layer_table,
    list_models,
    model_table,
)

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
PLAIN_DEPTHS = (20, 32, 44, 56, 110)
# He et al. 2016, table 6 (shortcut "A"), in millions, as printed in the paper
PAPER_PARAMS_M = {20: "0.27", 32: "0.46", 44: "0.66", 56: "0.85", 110: "1.7", 1202: "19.4"}


def test_list_models_names_and_order():
    names = list_models()
    expected_cifar = [f"resnet{d}" for d in CIFAR_DEPTHS] + [f"plain{d}" for d in PLAIN_DEPTHS]
    expected_tv = [f"tv_resnet{d}" for d in (18, 34, 50, 101, 152)]
    assert names == expected_cifar + expected_tv
    assert list_models("cifar-plain") == [f"plain{d}" for d in PLAIN_DEPTHS]


def test_resnet56_projection_shortcut_has_exact_parameter_count():
    model = create_model("resnet56")  # shortcut "B" is the default
    assert sum(p.numel() for p in model.parameters()) == 855_770
    assert count_parameters("resnet56") == 855_770


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_zero_pad_shortcut_parameter_counts_match_paper(depth):
    paper = PAPER_PARAMS_M[depth]
    decimals = len(paper.split(".")[1])
    params = count_parameters(f"resnet{depth}", shortcut="A")
    assert f"{params / 1e6:.{decimals}f}" == paper


def test_meta_count_matches_real_model():
    model = create_model("resnet32", shortcut="A", num_classes=100)
    real = sum(p.numel() for p in model.parameters())
    assert count_parameters("resnet32", shortcut="A", num_classes=100) == real


def test_plain_net_is_resnet_a_without_parameters_of_its_own():
    # zero-pad shortcuts add no parameters, so plain and resnet-A counts agree exactly
    for depth in PLAIN_DEPTHS:
        assert count_parameters(f"plain{depth}") == count_parameters(f"resnet{depth}", shortcut="A")


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_output_shape_on_cifar_batch(name, num_classes):
    model = create_model(name, num_classes=num_classes)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, num_classes)
    assert torch.isfinite(out).all()


def test_zero_pad_shortcut_output_shape():
    model = create_model("resnet20", shortcut="A")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_qualified_names_in_depth_order():
    names = [n for n, m in create_model("resnet20").named_modules() if not any(m.children())]
    assert names[:3] == ["conv1", "bn1", "relu"]
    assert names[3:9] == [
        f"layer1.0.{s}" for s in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2")
    ]
    assert "layer2.0.downsample.0" in names and "layer2.0.downsample.1" in names
    assert "layer3.2.bn2" in names
    assert names[-1] == "fc"
    model = create_model("resnet20")
    assert isinstance(model.get_submodule("layer3.0.downsample.0"), nn.Conv2d)
    assert isinstance(model.get_submodule("layer3.0.downsample.1"), nn.BatchNorm2d)


def test_relus_are_modules_one_per_use_site():
    model = create_model("resnet20")
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 2 * 9  # stem + two per block
    calls = []
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, args, out: calls.append(mod))
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == len(relus) == len({id(m) for m in calls})


def test_plain_nets_have_no_shortcut_modules():
    model = create_model("plain20")
    assert not any("downsample" in n for n, _ in model.named_modules())
    assert not any(block.residual for block in model.modules() if hasattr(block, "residual"))
    assert all(block.residual for block in create_model("resnet20").layer2)


def _zero_block_convs(model):
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.startswith("layer") and name.endswith(("conv1", "conv2")):
                m.weight.zero_()
    return model.eval()


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_residual_net_passes_input_through_zeroed_blocks(shortcut):
    model = _zero_block_convs(create_model("resnet20", shortcut=shortcut))
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x1), model(x2))
        stem = model.relu(model.bn1(model.conv1(x1)))
        # every stage-1 block is then the identity: relu(0 + x) = x for x >= 0
        assert torch.allclose(model.layer1(stem), stem)


def test_plain_net_blocks_nothing_through_zeroed_blocks():
    model = _zero_block_convs(create_model("plain20"))
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out1, out2 = model(x1), model(x2)
    assert torch.allclose(out1, out2)
    assert torch.allclose(out1, model.fc.bias.expand_as(out1))


def test_conv_init_is_kaiming_normal_fan_out():
    model = create_model("resnet56")
    conv = model.layer3[4].conv2  # 64 x 64 x 3 x 3 = 36,864 weights
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    expected = math.sqrt(2.0 / fan_out)
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.03)
    assert conv.weight.mean().abs().item() < 0.05 * expected
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    bn = model.layer1[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_unknown_name_lists_valid_names():
    with pytest.raises(UsageError) as info:
        create_model("resnet57")
    message = str(info.value)
    assert "resnet57" in message
    for name in ("resnet20", "plain110", "tv_resnet152"):
        assert name in message


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet20", {"shortcut": "C"}),
        ("plain20", {"shortcut": "A"}),
        ("tv_resnet18", {"shortcut": "A"}),
        ("resnet20", {"num_classes": 0}),
        ("resnet20", {"num_classes": 2.5}),
    ],
)
def test_bad_arguments_raise_usage_error(name, kwargs):
    with pytest.raises(UsageError):
        create_model(name, **kwargs)


def test_bad_depth_and_family_raise_usage_error():
    with pytest.raises(UsageError, match="6n\\+2"):
        CifarResNet(depth=21)
    with pytest.raises(UsageError, match="cifar-resnet"):
        list_models("imagenet")


def test_torchvision_resnet_builds_with_num_classes():
    model = create_model("tv_resnet18", num_classes=7)
    assert type(model).__module__.startswith("torchvision")
    assert model.fc.out_features == 7
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    spec = get_model_spec("tv_resnet18")
    assert (spec.family, spec.depth, spec.input_size) == ("torchvision", 18, 224)


def test_model_table_rows():
    table = model_table(family="cifar-plain")
    assert list(table.columns) == ["name", "family", "depth", "input_size", "params"]
    assert list(table["name"]) == list_models("cifar-plain")
    row = table.set_index("name").loc["plain56"]
    # ResNet-56 with "B" minus its two projection shortcuts (16*32 + 64 and 32*64 + 128)
    assert (row.family, row.depth, row.input_size) == ("cifar-plain", 56, 32)
    assert row.params == 855_770 - (16 * 32 + 2 * 32) - (32 * 64 + 2 * 64)


def test_layer_table_resnet56():
    model = create_model("resnet56")
    table = layer_table(model, 32)
    assert table.attrs["total_params"] == 855_770
    assert table["params"].sum() == 855_770
    # 2 FLOPs per multiply-accumulate: ResNet-56 is about 125M MACs
    assert table["flops"].sum() == table.attrs["total_flops"]
    assert 240e6 < table.attrs["total_flops"] < 260e6
    first = table.iloc[0]
    assert (first["name"], first["type"], first["output_shape"]) == (
        "conv1",
        "Conv2d",
        "(1, 16, 32, 32)",
    )
    # conv1: 16 out channels x 32 x 32 positions x 27 MACs x 2
    assert first["flops"] == 16 * 32 * 32 * 27 * 2
    last = table.iloc[-1]
    assert (last["name"], last["output_shape"], last["params"]) == ("fc", "(1, 10)", 650)
    assert table.set_index("name").loc["layer3.8.bn2", "output_shape"] == "(1, 64, 8, 8)"
    assert model.training  # the table's eval() is undone


def test_layer_table_rejects_bad_input_size():
    model = create_model("resnet20")
    with pytest.raises(UsageError):
        layer_table(model, 0)
