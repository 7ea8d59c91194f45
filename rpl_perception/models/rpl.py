"""Residual Pattern Learning (Liu et al., ICCV 2023), the network side.

Paper Eq. 3: a trainable branch reads the closed-set network's deep feature and adds a residual to the
feature ``f`` that feeds the frozen classifier head, which is then run twice::

    ỹ = head(f)                 closed-set logits (the closed-set network's own output, untouched)
    ŷ = head(f + rpl(deep))     logits used for the anomaly score

Closed-set labels always come from ỹ, so they are bit-identical with and without the branch.
"""

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RPLOutput", "RPLBranch", "FineRPLBranch", "RPLNetwork", "SeparableASPP",
           "init_kaiming_fan_in"]


class RPLOutput(NamedTuple):
    closed: torch.Tensor  # ỹ, (B, C, H, W) at the input resolution
    rpl: Optional[torch.Tensor]  # ŷ, same shape; None without a branch
    embedding: Optional[torch.Tensor]  # the branch's context feature (for CoroCL); None without a branch


def init_kaiming_fan_in(conv: nn.Conv2d) -> None:
    """Kaiming-normal (fan-in) weights and zero bias, as the official RPL code initialises its 1×1s."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1, groups: int = 1):
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size // 2),
                                   dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SeparableASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3) built from depth-wise separable convolutions.

    The input is projected to ``width`` channels once (1×1); three atrous branches (depth-wise 3×3
    at ``rates``, then a point-wise 1×1) and an image-pooling branch read it; the five
    ``width``-channel maps are merged by a 1×1. This is the official RPL context block (a copy of
    DeepLabV3+'s ASPP) made cheap enough for a small closed-set network: it keeps every input channel's
    information (no narrow projection) at a fraction of the full ASPP's cost.
    """

    def __init__(self, in_channels: int, width: int, rates=(2, 4, 8)):
        super().__init__()
        self.project = _conv_bn_relu(in_channels, width)
        self.atrous = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=r, dilation=r, groups=width, bias=False),
                          _conv_bn_relu(width, width)) for r in rates)
        # no BatchNorm on the pooled 1×1 map: its batch statistics would come from a handful of values
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1), nn.ReLU(inplace=True))
        self.merge = _conv_bn_relu(width * (len(rates) + 2), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.merge(torch.cat([x, *(branch(x) for branch in self.atrous), pooled], 1))


class RPLBranch(nn.Module):
    """Context block on the deep feature, then a 1×1 to the head's input width.

    ``context`` is architecture-specific (ASPP for DeepLabV3+, pyramid pooling for ESPNetv2); its
    output is the ``embedding`` that the CoroCL projector reads. The 1×1 runs before the bilinear
    upsampling to the head's resolution: both are linear and the interpolation weights sum to 1,
    so the order does not change the function, and the 1×1 is cheaper at the deep stride.
    """

    def __init__(self, context: nn.Module, context_channels: int, head_channels: int):
        super().__init__()
        self.context = context
        self.context_channels = context_channels
        self.residual = nn.Conv2d(context_channels, head_channels, 1, bias=True)
        init_kaiming_fan_in(self.residual)

    def embed(self, deep: torch.Tensor) -> torch.Tensor:
        """The context feature (the ``embedding`` CoroCL's projector reads)."""
        return self.context(deep)

    def residual_from(self, embedding: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """The residual added to the head's input ``feat``, at its resolution."""
        return F.interpolate(self.residual(embedding), feat.shape[-2:], mode="bilinear", align_corners=True)

    def forward(self, deep: torch.Tensor, feat: torch.Tensor) -> tuple:
        embedding = self.embed(deep)
        return self.residual_from(embedding, feat), embedding


class FineRPLBranch(RPLBranch):
    """A branch whose residual also reads the head's own input feature (the DeepLabV3+ decoder idea).

    The context (stride 16) is reduced to ``fine_channels`` and upsampled to the head's resolution,
    concatenated with the head's input ``feat``, fused by a 1×1 (+ BatchNorm, ReLU) and mapped to the
    residual by the final 1×1. A residual from the stride-16 context alone is a blurred field; with
    the fine feature it can follow object outlines and mark objects a few pixels wide. The
    closed-set network is untouched: ``feat`` is only read.
    """

    def __init__(self, context: nn.Module, context_channels: int, head_channels: int, fine_channels: int = 32):
        super().__init__(context, context_channels, head_channels)
        self.fine_channels = fine_channels
        self.reduce = _conv_bn_relu(context_channels, fine_channels)
        self.fuse = _conv_bn_relu(fine_channels + head_channels, fine_channels)
        self.residual = nn.Conv2d(fine_channels, head_channels, 1, bias=True)
        init_kaiming_fan_in(self.residual)

    def residual_from(self, embedding: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        # fuse's 1×1 over the concatenation [upsample(reduced), feat] is computed as the sum of its two
        # halves, the context half before the upsampling (a 1×1 commutes with bilinear interpolation,
        # whose weights sum to 1): the same function without a concatenated copy or a 1×1 over the
        # upsampled context at the head's resolution, the costly part of this branch on a CPU
        conv, norm, relu = self.fuse
        context_weight, feat_weight = conv.weight.split([self.fine_channels, feat.shape[1]], dim=1)
        coarse = F.conv2d(self.reduce(embedding), context_weight)
        fused = F.conv2d(feat, feat_weight) + F.interpolate(coarse, feat.shape[-2:], mode="bilinear",
                                                           align_corners=True)
        return self.residual(relu(norm(fused)))


class RPLNetwork(nn.Module):
    """The network: a frozen closed-set network (``closed_set``) with an optional RPL branch.

    The closed-set network must provide ``extract_features(x) -> (deep, feat)``, ``extract_deep(x) -> deep``
    (for training), ``head(feat)`` and ``upsample_logits(logits, size)`` (see :class:`~rpl_perception.models.espnetv2.ESPNetv2Segmentation`).
    It stays in eval mode with frozen parameters whatever ``train()`` is called with: RPL never
    changes it, and its BatchNorm must keep using the running statistics.
    """

    def __init__(self, closed_set: nn.Module, branch: Optional[RPLBranch] = None):
        super().__init__()
        self.closed_set = closed_set
        self.branch = branch
        for p in self.closed_set.parameters():
            p.requires_grad_(False)
        self.closed_set.eval()

    @property
    def has_branch(self) -> bool:
        return self.branch is not None

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this (the closed-set network's own, else 1)."""
        return getattr(self.closed_set, "size_divisor", 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.closed_set.eval()
        return self

    def forward(self, x: torch.Tensor) -> RPLOutput:
        size = x.shape[-2:]
        seg = self.closed_set
        deep, feat = seg.extract_features(x)
        closed = seg.upsample_logits(seg.head(feat), size)
        if self.branch is None:
            return RPLOutput(closed, None, None)
        residual, embedding = self.branch(deep, feat)
        rpl = seg.upsample_logits(seg.head(feat + residual), size)
        return RPLOutput(closed, rpl, embedding)
