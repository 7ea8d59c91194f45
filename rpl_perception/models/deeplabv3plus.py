"""DeepLabV3+ (Chen et al., ECCV 2018) segmenters and their official RPL attachment.

Two families, each with the key names of the checkpoints people actually have:

- :class:`DeepLabV3PlusWRN38`: NVIDIA's DeepWV3Plus on WiderResNet38-A2, the network of the RPL
  paper, written from the fact sheet ``shared/specs/wrn38_rpl.md``. Its state dict keys are those
  of NVIDIA's ``cityscapes_best.pth`` (without ``module.``), and of the official RPL checkpoints
  without ``branch1.`` (see :mod:`rpl_perception.checkpoint.pytorch_files` for the mapping).
- :class:`DeepLabV3PlusResNet`: ResNet-50/101, output stride 8 or 16, in the layout of the
  widely used VainF DeepLabV3Plus-Pytorch models (``backbone.*`` is torchvision's ResNet,
  ``classifier.{project,aspp,classifier}``) that the RPL code also offers as a trunk.

RPL (paper Eq. 3, fact sheet section 5) adds its residual to the 304-channel decoder input, the
concatenation [fine 48, upsampled ASPP 256] that feeds the frozen ``final`` layers, which then
run twice: ỹ = final(dec0), ŷ = final(dec0 + residual). The residual comes from a copy of the
segmenter's ASPP and bottleneck, upsampled to the decoder size, then a 1×1 (256 → 304, no bias).
:meth:`extract_features` returns ``(deep, dec0)`` and :meth:`head` is the frozen ``final``, so
both families plug into :class:`~rpl_perception.models.rpl.RPLNetwork` unchanged.
"""

import copy
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import NUM_CITYSCAPES_CLASSES
from .resnet import ResNet, dilation_for_output_stride, resnet50, resnet101
from .rpl import RPLBranch, init_kaiming_fan_in
from .wide_resnet import WiderResNetA2

__all__ = [
    "DeepWV3PlusASPP", "ASPP", "DeepLabV3PlusWRN38", "DeepLabV3PlusHead", "DeepLabV3PlusResNet",
    "DeepLabRPLBranch", "deeplabv3plus_wrn38", "deeplabv3plus_resnet50", "deeplabv3plus_resnet101",
    "deeplabv3plus_rpl_branch",
]

#: channels of ASPP branches, of the fine (low-level) projection, and of their concatenation
ASPP_CHANNELS = 256
FINE_CHANNELS = 48
DECODER_CHANNELS = ASPP_CHANNELS + FINE_CHANNELS  # 304


def _broadcast(pooled: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Bilinear upsampling of a 1×1 map is an exact broadcast, with either corner convention.
    return pooled.expand(-1, -1, like.shape[-2], like.shape[-1])


def _aspp_conv_branches(in_channels: int, rates: Sequence[int]):
    """The convolution branches both ASPP layouts share: 1×1, then 3×3 at each atrous rate,
    each conv → BN → ReLU (keys ``0``, ``1``)."""
    def branch(kernel, rate):
        return nn.Sequential(
            nn.Conv2d(in_channels, ASPP_CHANNELS, kernel, padding=rate if kernel == 3 else 0,
                      dilation=rate, bias=False),
            nn.BatchNorm2d(ASPP_CHANNELS), nn.ReLU(inplace=True))

    return [branch(1, 1)] + [branch(3, r) for r in rates]


class DeepWV3PlusASPP(nn.Module):
    """NVIDIA's ASPP (fact sheet section 3): outputs [image pool, 1×1, 3×3 r1, r2, r3], 1280 channels.

    No projection inside: the 1280 → 256 ``bot_aspp`` is a separate module of the closed-set network.
    """

    def __init__(self, in_channels: int, rates: Sequence[int] = (12, 24, 36)):
        super().__init__()
        self.features = nn.ModuleList(_aspp_conv_branches(in_channels, rates))
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(nn.Conv2d(in_channels, ASPP_CHANNELS, 1, bias=False),
                                      nn.BatchNorm2d(ASPP_CHANNELS), nn.ReLU(inplace=True))

    @property
    def out_channels(self) -> int:
        return ASPP_CHANNELS * (len(self.features) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = _broadcast(self.img_conv(self.img_pooling(x)), x)
        return torch.cat([pooled] + [branch(x) for branch in self.features], 1)


class ASPPPooling(nn.Sequential):
    """Image-pooling branch of :class:`ASPP`: pool → 1×1 → BN → ReLU, broadcast back."""

    def __init__(self, in_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, ASPP_CHANNELS, 1, bias=False),
                         nn.BatchNorm2d(ASPP_CHANNELS), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _broadcast(super().forward(x), x)


class ASPP(nn.Module):
    """torchvision/VainF ASPP: [1×1, 3×3 r1, r2, r3, image pool] → 1×1 projection to 256.

    ``project`` ends with Dropout(0.1), as in the VainF models (inactive in eval mode).
    """

    def __init__(self, in_channels: int, rates: Sequence[int]):
        super().__init__()
        convs = _aspp_conv_branches(in_channels, rates) + [ASPPPooling(in_channels)]
        self.convs = nn.ModuleList(convs)
        self.project = nn.Sequential(
            nn.Conv2d(len(convs) * ASPP_CHANNELS, ASPP_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(ASPP_CHANNELS), nn.ReLU(inplace=True), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], 1))


class _DeepLabV3PlusBase(nn.Module):
    """What every DeepLabV3+ here shares: the RPL seam and the forward built on it."""

    #: channels of the feature the RPL branch reads and of the feature the head reads
    head_channels = DECODER_CHANNELS
    head_stride = 2
    #: any input size works: every resize targets an explicit size
    size_divisor = 1
    #: the corner convention of every bilinear resize (set by each family)
    align_corners: bool

    def extract_features(self, x):
        raise NotImplementedError

    def extract_deep(self, x):
        """Only the deep feature of :meth:`extract_features` (the trunk; the decoder is skipped)."""
        raise NotImplementedError

    def head(self, feat):
        raise NotImplementedError

    def context_modules(self) -> "OrderedDict[str, nn.Module]":
        """The modules between ``deep`` and the decoder concat that the RPL branch copies."""
        raise NotImplementedError

    def upsample(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size, mode="bilinear", align_corners=self.align_corners)

    def upsample_logits(self, logits: torch.Tensor, size) -> torch.Tensor:
        return self.upsample(logits, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, feat = self.extract_features(x)
        return self.upsample_logits(self.head(feat), x.shape[-2:])


class DeepLabV3PlusWRN38(_DeepLabV3PlusBase, WiderResNetA2):
    """NVIDIA DeepWV3Plus: WiderResNet38-A2 (OS 8) + ASPP rates 12/24/36 + DeepLabV3+ decoder.

    The trunk's stages are this module's own children (``mod1`` … ``mod7``, ``pool2``,
    ``pool3``), as in the original, so keys match ``cityscapes_best.pth`` without renaming.
    Decoder (fact sheet section 4): ``dec0 = [bot_fine(m2) (48), Up(bot_aspp(aspp(f7))) (256)]``
    at the mod2 size (stride 2); ``final`` (3×3, 3×3, 1×1 → classes) maps it to logits, which
    are resized to the input with ``align_corners=True``.
    """

    deep_channels = 4096
    deep_stride = 8
    align_corners = True

    def __init__(self, num_classes: int = NUM_CITYSCAPES_CLASSES):
        super().__init__()  # the WiderResNet38-A2 stages
        self.num_classes = num_classes
        self.aspp = DeepWV3PlusASPP(self.deep_channels, rates=(12, 24, 36))
        self.bot_fine = nn.Conv2d(self.low_level_channels, FINE_CHANNELS, 1, bias=False)
        self.bot_aspp = nn.Conv2d(self.aspp.out_channels, ASPP_CHANNELS, 1, bias=False)
        self.final = nn.Sequential(
            nn.Conv2d(DECODER_CHANNELS, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1, bias=False))

    def extract_features(self, x: torch.Tensor):
        """Return ``(f7, dec0)``: the mod7 output (stride 8) and the 304-channel decoder input."""
        m2, f7 = WiderResNetA2.forward(self, x)
        up = self.upsample(self.bot_aspp(self.aspp(f7)), m2.shape[-2:])
        return f7, torch.cat([self.bot_fine(m2), up], 1)

    def extract_deep(self, x: torch.Tensor):
        return WiderResNetA2.forward(self, x)[1]

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        return self.final(feat)

    def context_modules(self) -> "OrderedDict[str, nn.Module]":
        return OrderedDict(aspp=self.aspp, bot_aspp=self.bot_aspp)


class DeepLabV3PlusHead(nn.Module):
    """VainF ``DeepLabHeadV3Plus``: ``project`` (low level → 48), ``aspp``, ``classifier``."""

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int,
                 rates: Sequence[int]):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(low_level_channels, FINE_CHANNELS, 1, bias=False),
                                     nn.BatchNorm2d(FINE_CHANNELS), nn.ReLU(inplace=True))
        self.aspp = ASPP(in_channels, rates)
        self.classifier = nn.Sequential(
            nn.Conv2d(DECODER_CHANNELS, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
            nn.ReLU(inplace=True), nn.Conv2d(256, num_classes, 1))
        for m in self.modules():  # VainF's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)


class DeepLabV3PlusResNet(_DeepLabV3PlusBase):
    """DeepLabV3+ on a torchvision ResNet (VainF layout): ``backbone`` + ``classifier``.

    Output stride 16 uses ASPP rates 6/12/18, output stride 8 uses 12/24/36; the weights are the
    same, only dilations differ. Resizes use ``align_corners=False``, as that code does.
    """

    deep_channels = ResNet.out_channels
    head_stride = 4
    align_corners = False

    def __init__(self, backbone: ResNet, num_classes: int = NUM_CITYSCAPES_CLASSES, output_stride: int = 16):
        super().__init__()
        rates = {8: (12, 24, 36), 16: (6, 12, 18)}.get(output_stride)
        if rates is None:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.deep_stride = output_stride
        self.backbone = backbone
        self.classifier = DeepLabV3PlusHead(backbone.out_channels, backbone.low_level_channels,
                                            num_classes, rates)

    def extract_features(self, x: torch.Tensor):
        """Return ``(layer4, dec0)``: the deep feature and the 304-channel decoder input (stride 4)."""
        low, deep = self.backbone(x)
        fine = self.classifier.project(low)
        up = self.upsample(self.classifier.aspp(deep), fine.shape[-2:])
        return deep, torch.cat([fine, up], 1)

    def extract_deep(self, x: torch.Tensor):
        return self.backbone(x)[1]

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        return self.classifier.classifier(feat)

    def context_modules(self) -> "OrderedDict[str, nn.Module]":
        return OrderedDict(aspp=self.classifier.aspp)


class DeepLabRPLBranch(RPLBranch):
    """The official RPL residual block (fact sheet section 5) in :class:`RPLBranch` form.

    ``context`` is a trainable copy of the closed-set network's ASPP (+ bottleneck), ``residual`` the
    1×1 ``atten_aspp_final`` (256 → 304, no bias). Unlike the generic branch, the context is
    upsampled to the decoder size *before* the 1×1, in the official code's order of operations;
    the upsampled context is the ``embedding`` that the CoroCL projector reads (``proj_head(r)``
    in the official code, at the decoder size).
    """

    def __init__(self, context: nn.Module, context_channels: int, head_channels: int,
                 align_corners: bool):
        super().__init__(context, context_channels, head_channels)
        # the official atten_aspp_final has no bias, unlike the generic branch's 1×1
        self.residual = nn.Conv2d(context_channels, head_channels, 1, bias=False)
        init_kaiming_fan_in(self.residual)
        self.align_corners = align_corners

    def residual_from(self, embedding: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        return self.residual(self._upsampled(embedding, feat.shape[-2:]))

    def _upsampled(self, embedding: torch.Tensor, feat_size) -> torch.Tensor:
        return F.interpolate(embedding, feat_size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, deep: torch.Tensor, feat: torch.Tensor) -> tuple:
        embedding = self._upsampled(self.embed(deep), feat.shape[-2:])
        return self.residual(embedding), embedding


# --- builders (the architecture registry in rpl_perception.models uses these) -----------------


def deeplabv3plus_wrn38(num_classes: int = NUM_CITYSCAPES_CLASSES) -> DeepLabV3PlusWRN38:
    """DeepLabV3+ WiderResNet38-A2 as in NVIDIA's ``cityscapes_best.pth`` and the RPL paper."""
    return DeepLabV3PlusWRN38(num_classes)


def deeplabv3plus_resnet50(num_classes: int = NUM_CITYSCAPES_CLASSES, output_stride: int = 16) -> DeepLabV3PlusResNet:
    return DeepLabV3PlusResNet(resnet50(dilation_for_output_stride(output_stride)), num_classes,
                               output_stride)


def deeplabv3plus_resnet101(num_classes: int = NUM_CITYSCAPES_CLASSES, output_stride: int = 16) -> DeepLabV3PlusResNet:
    return DeepLabV3PlusResNet(resnet101(dilation_for_output_stride(output_stride)), num_classes,
                               output_stride)


def deeplabv3plus_rpl_branch(closed_set: _DeepLabV3PlusBase, width: int = ASPP_CHANNELS,
                             design: str = "aspp", fine_channels: Optional[int] = None) -> DeepLabRPLBranch:
    """The RPL branch, initialised as the official trainer does (fact sheet section 8a).

    The context starts as an exact copy of the closed-set network's ASPP (and, for WRN38, ``bot_aspp``),
    trainable even when ``segmenter`` is already frozen; the 1×1 residual is fresh Kaiming-normal.
    """
    if design != "aspp" or fine_channels is not None:
        raise ValueError(f"the DeepLabV3+ RPL branch has one design, 'aspp' (a copy of its ASPP), without a "
                         f"fine path; got {design!r}, fine_channels {fine_channels}")
    if width != ASPP_CHANNELS:
        raise ValueError(f"the DeepLabV3+ RPL branch copies the ASPP, so its width is "
                         f"{ASPP_CHANNELS}; got {width}")
    context = nn.Sequential(copy.deepcopy(closed_set.context_modules()))
    context.requires_grad_(True).train()
    return DeepLabRPLBranch(context, width, closed_set.head_channels, closed_set.align_corners)
