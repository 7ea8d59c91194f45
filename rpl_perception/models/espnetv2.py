"""ESPNetv2 semantic segmentation network (Mehta et al., CVPR 2019), scale s = 2.0.

Written from the fact sheet ``shared/specs/espnetv2.md``; module names follow the public
EdgeNets checkpoint so that its ``state_dict`` loads with ``strict=True``.

Besides ``forward`` (closed-set logits at the input resolution) the network exposes the two
pieces an RPL branch needs (paper Eq. 3): :meth:`ESPNetv2Segmentation.extract_features`, which
returns the deep encoder feature and the feature that feeds the classifier head, and
:meth:`ESPNetv2Segmentation.head`, the frozen classifier head itself.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ESPNetv2Segmentation", "EfficientPyrPool", "espnetv2_cityscapes"]


# --- family A (encoder): modules with named children ``conv``/``bn``/``act`` ---------------


class CBR(nn.Sequential):
    """Conv → BN → PReLU."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.PReLU(out_ch)


class CB(nn.Sequential):
    """Conv → BN."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)


class BR(nn.Sequential):
    """BN → PReLU."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)


class CDilated(nn.Sequential):
    """Dilated (depth-wise when ``groups == in_ch``) convolution without normalisation."""

    def __init__(self, in_ch, out_ch, kernel_size, stride, dilation, groups):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride,
                              padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                              groups=groups, bias=False)


# --- family B (decoder): the same blocks stored as an inner ``nn.Sequential`` ---------------


class CBR2(nn.Module):
    def __init__(self, in_ch, out_ch, kernel_size, stride=1, groups=1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(out_ch),
        )

    def forward(self, x):
        return self.cbr(x)


class BR2(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x):
        return self.br(x)


class Shuffle(nn.Module):
    """Channel shuffle (ShuffleNet): interleave ``groups`` channel groups."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous()
        return x.view(b, c, h, w)


# --- encoder units ----------------------------------------------------------------------------

_DILATION_OF_KERNEL = {3: 1, 5: 2, 7: 3, 9: 4, 11: 5, 13: 6, 15: 7, 17: 8}


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid unit with ``k`` hierarchically summed branches."""

    def __init__(self, in_ch, out_ch, stride=1, k=4, r_lim=7):
        super().__init__()
        if out_ch % k:
            raise ValueError(f"EESP: out_ch={out_ch} is not divisible by k={k}")
        n = out_ch // k
        self.stride = stride
        self.proj_1x1 = CBR(in_ch, n, 1, groups=k)
        kernel_sizes = sorted(3 if 3 + 2 * i > r_lim else 3 + 2 * i for i in range(k))
        self.spp_dw = nn.ModuleList(
            CDilated(n, n, 3, stride, _DILATION_OF_KERNEL[ks], groups=n) for ks in kernel_sizes)
        self.conv_1x1_exp = CB(out_ch, out_ch, 1, groups=k)
        self.br_after_cat = BR(out_ch)
        self.module_act = nn.PReLU(out_ch)

    def forward(self, x):
        p = self.proj_1x1(x)
        outputs = [self.spp_dw[0](p)]
        for branch in self.spp_dw[1:]:
            outputs.append(branch(p) + outputs[-1])
        e = self.conv_1x1_exp(self.br_after_cat(torch.cat(outputs, 1)))
        if self.stride == 2:  # part of a down-sampler: no residual, no activation
            return e
        if e.shape == x.shape:
            e = e + x
        return self.module_act(e)


class DownSampler(nn.Module):
    """Stride-2 stage: [avg-pool(x), EESP(x)] plus a reinforcement from the input image."""

    def __init__(self, in_ch, out_ch, k=4, r_lim=9):
        super().__init__()
        self.eesp = EESP(in_ch, out_ch - in_ch, stride=2, k=k, r_lim=r_lim)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(CBR(3, 3, 3), CB(3, out_ch, 1))
        self.act = nn.PReLU(out_ch)

    def forward(self, x, img):
        avg = self.avg(x)
        y = torch.cat([avg, self.eesp(x)], 1)
        # Pool the image at least once, then until it reaches this stage's resolution.
        img = F.avg_pool2d(img, 3, stride=2, padding=1)
        while img.shape[-2:] != avg.shape[-2:]:
            img = F.avg_pool2d(img, 3, stride=2, padding=1)
        return self.act(y + self.inp_reinf(img))


class EESPNetEncoder(nn.Module):
    """The ESPNetv2 ImageNet backbone without its classifier (levels 1–4)."""

    def __init__(self, channels=(32, 128, 256, 512), k=4):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.level1 = CBR(3, c1, 3, stride=2)
        self.level2_0 = DownSampler(c1, c2, k=k, r_lim=13)
        self.level3_0 = DownSampler(c2, c3, k=k, r_lim=11)
        self.level3 = nn.ModuleList(EESP(c3, c3, k=k, r_lim=9) for _ in range(3))
        self.level4_0 = DownSampler(c3, c4, k=k, r_lim=9)
        self.level4 = nn.ModuleList(EESP(c4, c4, k=k, r_lim=7) for _ in range(7))

    def forward(self, img):
        e1 = self.level1(img)
        e2 = self.level2_0(e1, img)
        e3 = self.level3_0(e2, img)
        for layer in self.level3:
            e3 = layer(e3)
        e4 = self.level4_0(e3, img)
        for layer in self.level4:
            e4 = layer(e4)
        return e1, e2, e3, e4


# --- decoder units ----------------------------------------------------------------------------


class EfficientPyrPool(nn.Module):
    """Efficient pyramid pooling: five depth-wise stages at scales 2.0, 1.5, 1.0, 0.5, 0.1."""

    scales = (2.0, 1.5, 1.0, 0.5, 0.1)

    def __init__(self, in_ch, proj_ch, out_ch, last_layer_br=True):
        super().__init__()
        n = len(self.scales)
        self.projection_layer = CBR2(in_ch, proj_ch, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(proj_ch, proj_ch, 3, padding=1, groups=proj_ch, bias=False)
            for _ in self.scales)
        self.merge_layer = nn.Sequential(
            BR2(n * proj_ch),
            Shuffle(n),
            CBR2(n * proj_ch, proj_ch, 3, groups=proj_ch),
            nn.Conv2d(proj_ch, out_ch, 1, bias=not last_layer_br),
        )
        self.br = BR2(out_ch) if last_layer_br else None

    def forward(self, x):
        x = self.projection_layer(x)
        height, width = x.shape[-2:]
        pyramid = []
        for scale, stage in zip(self.scales, self.stages):
            size = (max(5, math.ceil(height * scale)), max(5, math.ceil(width * scale)))
            if scale < 1.0:
                h = stage(F.adaptive_avg_pool2d(x, size))
                h = F.interpolate(h, (height, width), mode="bilinear", align_corners=True)
            elif scale > 1.0:
                h = stage(F.interpolate(x, size, mode="bilinear", align_corners=True))
                h = F.adaptive_avg_pool2d(h, (height, width))
            else:
                h = stage(x)
            pyramid.append(h)
        out = self.merge_layer(torch.cat(pyramid, 1))
        return self.br(out) if self.br is not None else out


class EfficientPWConv(nn.Module):
    """Encoder→decoder merge: grouped 3×3 expansion gated by a global channel attention."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=False),
                                      nn.Sigmoid())
        self.expansion_layer = CBR2(in_ch, out_ch, 3, groups=math.gcd(in_ch, out_ch))

    def forward(self, x):
        return self.expansion_layer(x) * self.wt_layer(x)


def _upsample2x(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2 encoder with the EdgeNets bottom-up decoder.

    Input: a normalised (B, 3, H, W) image, H and W multiples of 32. Output: (B, num_classes,
    H, W) logits (the head runs at stride 2; its output is resized bilinearly,
    ``align_corners=True``, as the original code does).
    """

    #: channels and stride of the deep feature an RPL branch reads (encoder level 4)
    deep_channels = 512
    deep_stride = 16
    #: channels and stride of the feature the classifier head reads
    head_channels = 32
    head_stride = 2
    #: input sides must be multiples of this
    size_divisor = 32

    def __init__(self, num_classes=20, channels=(32, 128, 256, 512), proj_ch=10,
                 decoder=(64, 48, 32)):
        super().__init__()
        c1, c2, c3, c4 = channels
        d1, d2, d3 = decoder
        self.num_classes = num_classes
        self.base_net = EESPNetEncoder(channels)
        self.bu_dec_l1 = EfficientPyrPool(c4, proj_ch, d1)
        self.merge_enc_dec_l2 = EfficientPWConv(c3, d1)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(d1), nn.PReLU(d1))
        self.bu_dec_l2 = EfficientPyrPool(d1, proj_ch, d2)
        self.merge_enc_dec_l3 = EfficientPWConv(c2, d2)
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(d2), nn.PReLU(d2))
        self.bu_dec_l3 = EfficientPyrPool(d2, proj_ch, d3)
        self.merge_enc_dec_l4 = EfficientPWConv(c1, d3)
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(d3), nn.PReLU(d3))
        self.bu_dec_l4 = EfficientPyrPool(d3, proj_ch, num_classes, last_layer_br=False)

    def extract_features(self, img):
        """Return ``(deep, feat)``: encoder level-4 output (stride 16) and the head's input (stride 2)."""
        e1, e2, e3, e4 = self.base_net(img)
        d = self.bu_dec_l1(e4)
        d = self.bu_dec_l2(self.bu_br_l2(_upsample2x(d) + self.merge_enc_dec_l2(e3)))
        d = self.bu_dec_l3(self.bu_br_l3(_upsample2x(d) + self.merge_enc_dec_l3(e2)))
        feat = self.bu_br_l4(_upsample2x(d) + self.merge_enc_dec_l4(e1))
        return e4, feat

    def extract_deep(self, img):
        """Only the deep feature of :meth:`extract_features` (the encoder; the decoder is skipped)."""
        return self.base_net(img)[3]

    def head(self, feat):
        """The closed-set classifier head (logits at the head's stride)."""
        return self.bu_dec_l4(feat)

    def upsample_logits(self, logits, size):
        return F.interpolate(logits, size, mode="bilinear", align_corners=True)

    def forward(self, img):
        _, feat = self.extract_features(img)
        return self.upsample_logits(self.head(feat), img.shape[-2:])


def espnetv2_cityscapes(num_classes=20):
    """ESPNetv2 s = 2.0 as trained on Cityscapes (19 train ids + background)."""
    return ESPNetv2Segmentation(num_classes=num_classes)
