"""torchvision's ImageNet ResNets (random init), registered as `tv_resnet18` ... `tv_resnet152`."""

import torchvision.models as tvm

from gradscope.models.registry import register_model

TV_INPUT_SIZE = 224  # ImageNet crop side in pixels


@register_model(family="torchvision", depth=18, input_size=TV_INPUT_SIZE)
def tv_resnet18(num_classes: int = 10) -> tvm.ResNet:
    """torchvision ResNet-18 (basic blocks), weights=None."""
    return tvm.resnet18(weights=None, num_classes=num_classes)


@register_model(family="torchvision", depth=34, input_size=TV_INPUT_SIZE)
def tv_resnet34(num_classes: int = 10) -> tvm.ResNet:
    """torchvision ResNet-34 (basic blocks), weights=None."""
    return tvm.resnet34(weights=None, num_classes=num_classes)


@register_model(family="torchvision", depth=50, input_size=TV_INPUT_SIZE)
def tv_resnet50(num_classes: int = 10) -> tvm.ResNet:
    """torchvision ResNet-50 (bottleneck blocks), weights=None."""
    return tvm.resnet50(weights=None, num_classes=num_classes)


@register_model(family="torchvision", depth=101, input_size=TV_INPUT_SIZE)
def tv_resnet101(num_classes: int = 10) -> tvm.ResNet:
    """torchvision ResNet-101 (bottleneck blocks), weights=None."""
    return tvm.resnet101(weights=None, num_classes=num_classes)


@register_model(family="torchvision", depth=152, input_size=TV_INPUT_SIZE)
def tv_resnet152(num_classes: int = 10) -> tvm.ResNet:
    """torchvision ResNet-152 (bottleneck blocks), weights=None."""
    return tvm.resnet152(weights=None, num_classes=num_classes)
