"""ResNet-50/101 trunks (He et al., CVPR 2016, torchvision's v1.5 bottleneck) for DeepLabV3+.

Module and key names are torchvision's (``conv1``, ``bn1``, ``layer1.0.downsample.1`` …), so an
ImageNet ``resnet50``/``resnet101`` state dict (less ``fc.*``) or the ``backbone.*`` part of a
torchvision-style DeepLabV3+ checkpoint loads unchanged. As in torchvision,
``replace_stride_with_dilation`` turns the stride of layer2/3/4 into dilation, which gives output
stride 8 (``[False, True, True]``) or 16 (``[False, False, True]``).
"""

from typing import Sequence, Tuple

import torch
from torch import nn

__all__ = ["Bottleneck", "ResNet", "resnet50", "resnet101", "dilation_for_output_stride"]


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride, dilation) → 1×1 ×4, with BN after each conv; ReLU after the addition."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk without the ImageNet head: (B, 3, H, W) → (layer1 output, layer4 output).

    layer1 (256 channels, stride 4) is DeepLabV3+'s low-level feature; layer4 (2048 channels,
    stride 8/16/32 by ``replace_stride_with_dilation``) feeds the ASPP.
    """

    low_level_channels = 256
    out_channels = 2048

    def __init__(self, layers: Sequence[int],
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False)):
        super().__init__()
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation must have 3 entries (layer2, layer3, "
                             f"layer4), got {tuple(replace_stride_with_dilation)}")
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, layers[3], 2, replace_stride_with_dilation[2])
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def dilation_for_output_stride(output_stride: int) -> Tuple[bool, bool, bool]:
    """``replace_stride_with_dilation`` for DeepLab's output stride 8 or 16."""
    if output_stride == 8:
        return (False, True, True)
    if output_stride == 16:
        return (False, False, True)
    raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")


def resnet50(replace_stride_with_dilation=(False, False, False)) -> ResNet:
    return ResNet((3, 4, 6, 3), replace_stride_with_dilation)


def resnet101(replace_stride_with_dilation=(False, False, False)) -> ResNet:
    return ResNet((3, 4, 23, 3), replace_stride_with_dilation)
