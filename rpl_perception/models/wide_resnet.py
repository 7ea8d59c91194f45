"""WiderResNet38-A2 (Wu et al., "Wider or Deeper", 2019) in dilation mode, output stride 8.

Written from the fact sheet ``shared/specs/wrn38_rpl.md`` (section 2), which describes the
backbone of NVIDIA's DeepWV3Plus as the official RPL code uses it. Module names follow that code
(``mod1`` … ``mod7``, ``blockN``, ``bn1.0``, ``convs.conv1`` …) so that its weights load with
``strict=True``. The ImageNet head (``bn_out``, ``classifier``) is not part of the closed-set network and
is left out.
"""

from collections import OrderedDict
from typing import Sequence, Tuple

import torch
from torch import nn

__all__ = ["IdentityResidualBlock", "WiderResNetA2", "WRN38_STAGES"]


def bn_relu(channels: int) -> nn.Sequential:
    """Plain BatchNorm + ReLU (the source project used InPlaceABN; the official RPL model does not)."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class IdentityResidualBlock(nn.Module):
    """Pre-activation residual block: ``convs(a) + shortcut`` with ``a = ReLU(BN(x))``.

    ``channels`` of length 2 gives two 3×3 convolutions, of length 3 a 1×1 → 3×3 → 1×1
    bottleneck (with channel-wise dropout before the last 1×1 when ``dropout`` > 0). The shortcut
    is ``proj_conv(a)`` (built from the *pre-activated* input) when the block changes width or
    stride, otherwise the raw ``x``; nothing follows the addition.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], stride: int = 1,
                 dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        if len(channels) not in (2, 3):
            raise ValueError(f"channels must have 2 or 3 entries, got {tuple(channels)}")
        self.bn1 = bn_relu(in_channels)
        if len(channels) == 2:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 3, stride, padding=dilation,
                                    dilation=dilation, bias=False)),
                ("bn2", bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, padding=dilation,
                                    dilation=dilation, bias=False)),
            ]
        else:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 1, stride, bias=False)),
                ("bn2", bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, padding=dilation,
                                    dilation=dilation, bias=False)),
                ("bn3", bn_relu(channels[1])),
            ]
            if dropout > 0:
                layers.append(("dropout", nn.Dropout2d(dropout)))
            layers.append(("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False)))
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or in_channels != channels[-1]:
            self.proj_conv = nn.Conv2d(in_channels, channels[-1], 1, stride, bias=False)
        else:
            self.proj_conv = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn1(x)
        shortcut = x if self.proj_conv is None else self.proj_conv(a)
        return self.convs(a) + shortcut


#: per stage mod2…mod7: (number of blocks, channel tuple, dilation, stride of block1, dropout)
WRN38_STAGES = (
    (3, (128, 128), 1, 1, 0.0),
    (3, (256, 256), 1, 1, 0.0),
    (6, (512, 512), 1, 2, 0.0),
    (3, (512, 1024), 2, 1, 0.0),
    (1, (512, 1024, 2048), 4, 1, 0.3),
    (1, (1024, 2048, 4096), 4, 1, 0.5),
)


class WiderResNetA2(nn.Module):
    """WiderResNet-A2 trunk, output stride 8: (B, 3, H, W) → (m2, f7).

    ``m2`` is the mod2 output (128 channels at ⌈H/2⌉ × ⌈W/2⌉), ``f7`` the mod7 output (4096
    channels at stride 8, no final BN/ReLU). Max pools before mod2 and mod3, the stride-2
    convolution in mod4.block1; mod5 uses dilation 2, mod6 and mod7 dilation 4.
    """

    #: channels of the two features returned by ``forward``
    low_level_channels = 128
    out_channels = 4096

    def __init__(self, stages=WRN38_STAGES):
        super().__init__()
        self.mod1 = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 64, 3, 1, 1, bias=False))]))
        in_channels = 64
        for index, (num_blocks, channels, dilation, stride, dropout) in enumerate(stages):
            blocks = []
            for b in range(num_blocks):
                blocks.append((f"block{b + 1}", IdentityResidualBlock(
                    in_channels, channels, stride if b == 0 else 1, dilation, dropout)))
                in_channels = channels[-1]
            self.add_module(f"mod{index + 2}", nn.Sequential(OrderedDict(blocks)))
        # registered after the stages, as NVIDIA's DeepWV3Plus does, so key order matches
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool3 = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        m2 = self.mod2(self.pool2(self.mod1(x)))
        x = self.mod3(self.pool3(m2))
        f7 = self.mod7(self.mod6(self.mod5(self.mod4(x))))
        return m2, f7
