"""CIFAR ResNets of depth 6n+2 (He et al. 2016, section 4.2) and their plain twins."""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from gradscope.errors import UsageError
from gradscope.models.registry import register_model

# The shortcut kinds a CIFAR ResNet accepts; None builds the plain net (no shortcut at all).
SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)  # channels of the three stages, at 32x32, 16x16 and 8x8 for CIFAR
DEFAULT_WIDTH = STAGE_WIDTHS[0]  # the paper's: `width=w` builds stages of w, 2w and 4w channels


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut "A": subsample by `stride`, zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, H/s, W/s)
        # F.pad pads the last dims first: (W, W, H, H, C, C)
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))  # (B, C_out, H/s, W/s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Shortcut "B": a strided 1x1 convolution and BatchNorm, as `downsample.0` / `downsample.1`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; with a shortcut (residual) or without (plain)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str | None):
        super().__init__()
        self.residual = shortcut is not None
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        # not in-place: a recorder's tensor hook on bn1's output must see that tensor unchanged
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if self.residual and (stride != 1 or in_channels != out_channels):
            if shortcut == "A":
                self.downsample = ZeroPadShortcut(in_channels, out_channels, stride)
            else:
                self.downsample = projection_shortcut(in_channels, out_channels, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, C_out, H/s, W/s)
        if self.residual:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity  # not `+=`: bn2's output stays intact for gradient hooks
        return self.relu2(out)


class CifarResNet(nn.Module):
    """A 6n+2-layer CIFAR ResNet (shortcut "A" or "B") or, with shortcut=None, its plain twin.

    `width` is the first stage's channel count (the paper's 16); the later stages have twice
    and four times as many, so a width sweep scales every layer but the input and the head.
    """

    input_shape = (3, 32, 32)  # one CIFAR image: what a probe's Gaussian batch is made of

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        shortcut: str | None = "B",
        width: int = DEFAULT_WIDTH,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UsageError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
        if shortcut is not None and shortcut not in SHORTCUTS:
            raise UsageError(f"shortcut must be one of {SHORTCUTS} (or None), got {shortcut!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise UsageError(f"width must be a positive integer, got {width!r}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.shortcut = shortcut
        self.width = width
        w1, w2, w3 = width, 2 * width, 4 * width
        self.conv1 = nn.Conv2d(3, w1, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(w1, w1, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(w1, w2, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(w2, w3, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        self._init_weights()

    def _make_stage(self, in_channels, out_channels, blocks, stride) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride, self.shortcut)]
        layers += [
            BasicBlock(out_channels, out_channels, 1, self.shortcut) for _ in range(blocks - 1)
        ]
        return nn.Sequential(*layers)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16, H, W)
        x = self.layer2(x)  # (B, 32, H/2, W/2)
        x = self.layer3(x)  # (B, 64, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 64)
        return self.fc(x)  # (B, num_classes)


def _resnet(depth, num_classes, shortcut, width):
    return CifarResNet(depth, num_classes, shortcut, width)


register_resnet = partial(
    register_model, family="cifar-resnet", input_size=32, shortcuts=SHORTCUTS, has_width=True
)
register_plain = partial(register_model, family="cifar-plain", input_size=32, has_width=True)


@register_resnet(depth=20)
def resnet20(num_classes: int = 10, shortcut: str = "B", width: int = DEFAULT_WIDTH) -> CifarResNet:
    """ResNet-20 for CIFAR (n=3); 0.27M parameters with shortcut "A"."""
    return _resnet(20, num_classes, shortcut, width)


@register_resnet(depth=32)
def resnet32(num_classes: int = 10, shortcut: str = "B", width: int = DEFAULT_WIDTH) -> CifarResNet:
    """ResNet-32 for CIFAR (n=5); 0.46M parameters with shortcut "A"."""
    return _resnet(32, num_classes, shortcut, width)


@register_resnet(depth=44)
def resnet44(num_classes: int = 10, shortcut: str = "B", width: int = DEFAULT_WIDTH) -> CifarResNet:
    """ResNet-44 for CIFAR (n=7); 0.66M parameters with shortcut "A"."""
    return _resnet(44, num_classes, shortcut, width)


@register_resnet(depth=56)
def resnet56(num_classes: int = 10, shortcut: str = "B", width: int = DEFAULT_WIDTH) -> CifarResNet:
    """ResNet-56 for CIFAR (n=9); 0.85M parameters with shortcut "A", 855,770 with "B"."""
    return _resnet(56, num_classes, shortcut, width)


@register_resnet(depth=110)
def resnet110(
    num_classes: int = 10, shortcut: str = "B", width: int = DEFAULT_WIDTH
) -> CifarResNet:
    """ResNet-110 for CIFAR (n=18); 1.7M parameters with shortcut "A"."""
    return _resnet(110, num_classes, shortcut, width)


@register_resnet(depth=1202)
def resnet1202(
    num_classes: int = 10, shortcut: str = "B", width: int = DEFAULT_WIDTH
) -> CifarResNet:
    """ResNet-1202 for CIFAR (n=200); 19.4M parameters with shortcut "A"."""
    return _resnet(1202, num_classes, shortcut, width)


@register_plain(depth=20)
def plain20(num_classes: int = 10, width: int = DEFAULT_WIDTH) -> CifarResNet:
    """Plain-20: ResNet-20's layers without shortcut connections."""
    return _resnet(20, num_classes, None, width)


@register_plain(depth=32)
def plain32(num_classes: int = 10, width: int = DEFAULT_WIDTH) -> CifarResNet:
    """Plain-32: ResNet-32's layers without shortcut connections."""
    return _resnet(32, num_classes, None, width)


@register_plain(depth=44)
def plain44(num_classes: int = 10, width: int = DEFAULT_WIDTH) -> CifarResNet:
    """Plain-44: ResNet-44's layers without shortcut connections."""
    return _resnet(44, num_classes, None, width)


@register_plain(depth=56)
def plain56(num_classes: int = 10, width: int = DEFAULT_WIDTH) -> CifarResNet:
    """Plain-56: ResNet-56's layers without shortcut connections."""
    return _resnet(56, num_classes, None, width)


@register_plain(depth=110)
def plain110(num_classes: int = 10, width: int = DEFAULT_WIDTH) -> CifarResNet:
    """Plain-110: ResNet-110's layers without shortcut connections."""
    return _resnet(110, num_classes, None, width)
