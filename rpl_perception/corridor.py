"""The drivable corridor: where the vehicle may drive, from the segmenter's own closed-set labels.

The corridor is the union of the chosen classes (road, optionally sidewalk / terrain), closed
morphologically and with its holes filled: an object standing on the road is labelled something
else (car, person, …) and leaves a hole in the road, which belongs to the corridor; a tree beside
the road does not, because its region reaches the image's side or top edge. The bottom edge counts
as corridor (the road continues under the vehicle), so an obstacle cut by the bottom edge is
still a hole. Works on a copy scaled to at most ``work_width`` pixels (the labels come from a
network at about 1024 px anyway) and returns the mask at the labels' size.

Anomaly scores can then be restricted to the corridor (hard: outside gets the frame's minimum) or
biased by the distance to it (soft prior): :func:`restrict_to_corridor`, :func:`corridor_prior`.
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np

from .labels import CITYSCAPES_CLASSES

__all__ = ["DEFAULT_CORRIDOR_CLASSES", "CorridorSettings", "class_ids", "drivable_corridor",
           "restrict_to_corridor", "corridor_distance", "corridor_prior"]

#: road + sidewalk: obstacles at the kerb stay inside (road alone loses them, see README)
DEFAULT_CORRIDOR_CLASSES = ("road", "sidewalk")


@dataclass(frozen=True)
class CorridorSettings:
    classes: Tuple[str, ...] = DEFAULT_CORRIDOR_CLASSES
    #: closing kernel diameter as a fraction of the image width (bridges lane marks, thin poles)
    closing: float = 0.02
    #: the corridor is computed on a copy at most this wide
    work_width: int = 480

    def __post_init__(self):
        class_ids(self.classes)  # names checked at construction
        if not 0 <= self.closing < 1:
            raise ValueError(f"corridor closing must be a fraction of the width in [0, 1); got {self.closing}")
        if self.work_width < 16:
            raise ValueError(f"corridor work width must be at least 16 px; got {self.work_width}")


def class_ids(names: Sequence[str], classes: Sequence[str] = CITYSCAPES_CLASSES) -> Tuple[int, ...]:
    """Train ids of class ``names``; ValueError naming the unknown ones and the known ones."""
    names = tuple(names)
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        raise ValueError(f"corridor classes {unknown or list(names)} are unknown or empty; "
                         f"choose from {', '.join(classes)}")
    return tuple(classes.index(n) for n in names)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every non-mask region that does not reach the top, left or right edge added."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)  # a frame of background on top, left, right ...
    padded[1:-1, 1:-1] = mask
    padded[-1, :] = 1  # ... and corridor below the image
    outside = np.zeros((h + 4, w + 4), np.uint8)  # floodFill's mask is 2 px larger
    cv2.floodFill(padded, outside, (0, 0), 2, flags=4)
    return padded[1:-1, 1:-1] != 2


def drivable_corridor(labels: np.ndarray, settings: CorridorSettings = CorridorSettings(),
                      classes: Sequence[str] = CITYSCAPES_CLASSES) -> np.ndarray:
    """H×W bool corridor from H×W train ids (``classes``: the model's class names)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be an H×W map of train ids; got shape {labels.shape}")
    h, w = labels.shape
    scale = min(1.0, settings.work_width / w)
    small = labels if scale == 1.0 else cv2.resize(
        labels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_NEAREST)
    mask = np.isin(small, class_ids(settings.classes, classes)).astype(np.uint8)
    diameter = int(round(settings.closing * small.shape[1])) | 1
    if diameter > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))
        # pad with replicate so the closing does not eat the corridor where it meets the edges
        pad = diameter // 2 + 1
        padded = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        mask = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad]
    filled = _fill_holes(mask).astype(np.uint8)
    if scale != 1.0:
        filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_NEAREST)
    return filled.astype(bool)


def restrict_to_corridor(score: np.ndarray, corridor: np.ndarray) -> np.ndarray:
    """The score inside the corridor, the frame's minimum outside (hard restriction)."""
    return np.where(corridor, score, score.min()).astype(score.dtype, copy=False)


def corridor_distance(corridor: np.ndarray) -> np.ndarray:
    """H×W float32 distance in pixels from each pixel to the corridor (0 inside)."""
    if not corridor.any():
        return np.full(corridor.shape, np.float32(np.hypot(*corridor.shape)))
    return cv2.distanceTransform((~corridor).astype(np.uint8), cv2.DIST_L2, 5)


def corridor_prior(score: np.ndarray, corridor: np.ndarray, penalty: float, falloff: float = 0.1) -> np.ndarray:
    """Soft prior: the score lowered by ``penalty`` × min(distance / (``falloff`` × image height), 1).

    Pixels next to the corridor (an animal at the roadside) lose little, far ones (buildings, sky)
    the whole ``penalty`` (in score units; e.g. the span of the model's display range)."""
    if falloff <= 0:
        raise ValueError(f"falloff must be > 0 (a fraction of the image height); got {falloff}")
    ramp = np.minimum(corridor_distance(corridor) / (falloff * corridor.shape[0]), 1.0)
    return (score - np.float32(penalty) * ramp).astype(score.dtype, copy=False)
