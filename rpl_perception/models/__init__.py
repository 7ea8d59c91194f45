"""Segmentation architectures and their RPL attachment: the architecture registry.

The registry maps an architecture name (stored in every checkpoint) to how to build the
closed-set network and its RPL branch. Add an architecture with :func:`register_architecture`.
Loading weights from files is :mod:`rpl_perception.checkpoint`'s (e.g. ``load_closed_set``); this
package imports none of it.
"""

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, Optional, Tuple

from torch import nn

from ..labels import CITYSCAPES_CLASSES
from .anomaly import AnomalyModel, ImageNormalisation
from .deeplabv3plus import (
    DeepLabV3PlusResNet,
    DeepLabV3PlusWRN38,
    deeplabv3plus_resnet50,
    deeplabv3plus_resnet101,
    deeplabv3plus_rpl_branch,
    deeplabv3plus_wrn38,
)
from .espnetv2 import EfficientPyrPool, ESPNetv2Segmentation, espnetv2_cityscapes
from .rpl import FineRPLBranch, RPLBranch, RPLNetwork, RPLOutput, SeparableASPP

__all__ = [
    "Architecture", "ARCHITECTURES", "CITYSCAPES_CLASSES", "register_architecture",
    "get_architecture", "AnomalyModel", "ImageNormalisation", "RPLBranch", "RPLOutput",
    "RPLNetwork", "ESPNetv2Segmentation", "DeepLabV3PlusWRN38", "DeepLabV3PlusResNet",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    """How to build one closed-set network family and attach RPL to it."""

    name: str
    build_closed_set: Callable[[], nn.Module]
    #: (frozen closed-set network, branch width, design, fine_channels=None) → RPLBranch, initialised as
    #: the official code does; ``fine_channels`` only for designs with a fine path (None: the design's default)
    build_rpl_branch: Callable[..., RPLBranch]
    default_rpl_width: int
    input_size: Tuple[int, int]  # (width, height) the network was trained at
    class_names: Tuple[str, ...] = CITYSCAPES_CLASSES
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    extra: Dict[str, object] = field(default_factory=dict)
    #: RPL branch designs ``build_rpl_branch`` knows; the first is the default
    rpl_designs: Tuple[str, ...] = ("aspp",)
    #: the design of model files that record none (written before designs were recorded); None:
    #: the default design
    unrecorded_rpl_design: Optional[str] = None

    @property
    def design_of_unrecorded(self) -> str:
        return self.unrecorded_rpl_design or self.rpl_designs[0]

    @property
    def num_inlier(self) -> int:
        return len(self.class_names)


ARCHITECTURES: Dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None


def espnetv2_rpl_branch(closed_set: ESPNetv2Segmentation, width: int = 128, design: str = "aspp",
                        fine_channels: Optional[int] = None) -> RPLBranch:
    """ESPNetv2's RPL branch on the level-4 feature (stride 16, 512 channels), in one of three designs.

    * ``aspp`` (the default, the shipped model's): :class:`SeparableASPP` (512 → ``width``, randomly
      initialised), which keeps the whole feature, as the official branch keeps its 4096-channel input.
    * ``pyramid``: a copy of the closed-set network's own context module ``bu_dec_l1`` (EfficientPyrPool
      512 → 10 → 64), as the official code copies DeepLabV3+'s ASPP; copied when the widths match.
      Its first layer keeps only 10 of the 512 channels, the ones the decoder needs for Cityscapes.
    * ``aspp_fine``: the ``aspp`` context, and a residual that also reads the head's input feature
      (:class:`FineRPLBranch`, ``fine_channels`` wide, 32 by default): sharp enough for small obstacles.
    """
    if fine_channels is not None and design != "aspp_fine":
        raise ValueError(f"fine_channels is a setting of the aspp_fine design, not of {design!r}")
    if design == "pyramid":
        context = EfficientPyrPool(closed_set.deep_channels, 10, width)
        if width == closed_set.bu_dec_l1.merge_layer[3].out_channels:
            context.load_state_dict(closed_set.bu_dec_l1.state_dict())
    elif design in ("aspp", "aspp_fine"):
        context = SeparableASPP(closed_set.deep_channels, width)
    else:
        raise ValueError(f"unknown ESPNetv2 RPL branch design {design!r}; known: aspp, pyramid, aspp_fine")
    if design == "aspp_fine":
        return FineRPLBranch(context, width, closed_set.head_channels, fine_channels or 32)
    return RPLBranch(context, width, closed_set.head_channels)


register_architecture(Architecture(
    name="espnetv2_cityscapes",
    build_closed_set=espnetv2_cityscapes,
    build_rpl_branch=espnetv2_rpl_branch,
    # aspp / 128: the shipped model's branch, better than the pyramid copy on every held-back set
    # (docs/rpl_training.md); files from before designs were recorded hold the pyramid
    default_rpl_width=128,
    input_size=(1024, 512),
    rpl_designs=("aspp", "pyramid", "aspp_fine"),
    unrecorded_rpl_design="pyramid",
))

# DeepLabV3+ (19 Cityscapes classes, trained and evaluated on full 2048×1024 frames)
register_architecture(Architecture(
    name="deeplabv3plus_wrn38_cityscapes",
    build_closed_set=deeplabv3plus_wrn38,
    build_rpl_branch=deeplabv3plus_rpl_branch,
    default_rpl_width=256,
    input_size=(2048, 1024),
))
for _depth, _build in ((50, deeplabv3plus_resnet50), (101, deeplabv3plus_resnet101)):
    for _stride in (8, 16):
        register_architecture(Architecture(
            name=f"deeplabv3plus_resnet{_depth}_os{_stride}_cityscapes",
            build_closed_set=partial(_build, output_stride=_stride),
            build_rpl_branch=deeplabv3plus_rpl_branch,
            default_rpl_width=256,
            input_size=(2048, 1024),
        ))

