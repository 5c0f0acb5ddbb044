"""CIFAR ResNet / plain nets and torchvision ResNets behind one registry."""

# importing the model modules registers their factories
from gradscope.models import cifar_resnet, torchvision_resnet  # noqa: F401
from gradscope.models.cifar_resnet import SHORTCUTS, BasicBlock, CifarResNet, ZeroPadShortcut
from gradscope.models.registry import (
    DEFAULT_SHORTCUT,
    FAMILIES,
    ModelSpec,
    count_parameters,
    create_model,
    get_model_spec,
    list_models,
    load_factory,
    model_table,
    register_model,
)
from gradscope.models.summary import layer_table

__all__ = [
    "DEFAULT_SHORTCUT",
    "FAMILIES",
    "SHORTCUTS",
    "BasicBlock",
    "CifarResNet",
    "ModelSpec",
    "ZeroPadShortcut",
    "count_parameters",
    "create_model",
    "get_model_spec",
    "layer_table",
    "list_models",
    "load_factory",
    "model_table",
    "register_model",
]
