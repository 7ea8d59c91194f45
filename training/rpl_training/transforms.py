"""Outlier exposure (paper Eq. 1) on uint8 images, as the official ``dataset/data_loader.py``.

Per training sample (all randomness from one ``numpy.random.Generator``):

1. inlier image (optionally resized to ``inlier_size`` first): random horizontal flip, then a
   random ``crop_size`` crop, padded where the image is smaller (image: the mean colour, which is
   0 after normalisation as the official code pads the normalised image; label 255);
2. outlier image (optionally scaled by ``relative_scale`` first, and augmented: flip, colour
   jitter): a copy scaled by a factor drawn from ``scales`` (bilinear image, nearest mask),
   padded (image mean colour, label 255) / centre-cropped to ``crop_size``; the bounding box of
   its object pixels (254) is pasted at a uniformly random position of the inlier crop, object
   pixels only, and they get label 254;
3. the context image for CoroCL: the unscaled outlier image padded / centre-cropped to
   ``crop_size``, labels 0 background / 254 object / 255 padding or void.

With a :class:`RoadPlacement` of share > 0 and the frame's road mask (the frozen closed-set network's own
road pixels, :mod:`rpl_training.road_masks`), that share of the objects is instead pasted on the
whole (resized, flipped) inlier frame where obstacles lie: standing on a road pixel, scaled by
perspective (:func:`paste_on_road`), and the crop is then drawn among the windows that hold the
object. This is not in the official code; the paper pastes anywhere.

Differences from the official code, none of which changes what is learnt: the crop offset is
drawn from [0, H − h] (the official ``randint(0, H − h + 1)`` can leave one padded row); the flip
probability is a parameter (the official ``random_mirror`` flips with probability 0.8).
"""

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from rpl_perception.image import resize_labels, resize_rgb

from .datasets import OBJECT, VOID

__all__ = ["OFFICIAL_OUTLIER_SCALES", "OutlierExposure", "RoadPlacement", "random_crop_pad", "pad_center_crop",
           "object_bbox", "paste_objects", "paste_on_road", "crop_around", "jitter_colour", "scale_pair"]

#: the official ``ood_train_scale_array`` (0.5 twice: drawn twice as often)
OFFICIAL_OUTLIER_SCALES = (0.25, 0.5, 0.5, 0.75, 0.1, 0.125)


def _pad(image: np.ndarray, label: np.ndarray, size_hw, pad_rgb):
    """Pad to at least ``size_hw``, centred with the odd row/column at the bottom/right (as the
    official ``pad_image_to_shape``); image ``pad_rgb``, label 255."""
    h, w = label.shape
    ph, pw = max(size_hw[0] - h, 0), max(size_hw[1] - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    top, left = ph // 2, pw // 2
    borders = (top, ph - top, left, pw - left)
    image = cv2.copyMakeBorder(image, *borders, cv2.BORDER_CONSTANT, value=tuple(int(v) for v in pad_rgb))
    label = cv2.copyMakeBorder(label, *borders, cv2.BORDER_CONSTANT, value=VOID)
    return image, label


def random_crop_pad(image: np.ndarray, label: np.ndarray, size_hw, rng: np.random.Generator,
                    pad_rgb=(0, 0, 0)) -> Tuple[np.ndarray, np.ndarray]:
    """A random ``size_hw`` window; sides smaller than the window are padded (image ``pad_rgb``,
    label 255) after cropping, as the official ``random_crop_pad_to_shape``."""
    h, w = label.shape
    y = int(rng.integers(0, h - size_hw[0] + 1)) if h > size_hw[0] else 0
    x = int(rng.integers(0, w - size_hw[1] + 1)) if w > size_hw[1] else 0
    image, label = image[y:y + size_hw[0], x:x + size_hw[1]], label[y:y + size_hw[0], x:x + size_hw[1]]
    return _pad(image, label, size_hw, pad_rgb)


def pad_center_crop(image: np.ndarray, label: np.ndarray, size_hw, pad_rgb=(0, 0, 0)):
    """Pad (centred; image ``pad_rgb``, label 255) to at least ``size_hw``, then take the centre
    ``size_hw`` window (the official ``center_crop_to_shape`` / ``pad_image_to_shape``)."""
    image, label = _pad(image, label, size_hw, pad_rgb)
    h, w = label.shape
    y, x = (h - size_hw[0]) // 2, (w - size_hw[1]) // 2
    return (np.ascontiguousarray(image[y:y + size_hw[0], x:x + size_hw[1]]),
            np.ascontiguousarray(label[y:y + size_hw[0], x:x + size_hw[1]]))


def object_bbox(mask: np.ndarray, value: int = OBJECT) -> Optional[Tuple[int, int, int, int]]:
    """(y0, x0, y1, x1), end exclusive, of the pixels equal to ``value``; None if there are none."""
    rows = np.flatnonzero((mask == value).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((mask == value).any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def paste_objects(image: np.ndarray, label: np.ndarray, obj_image: np.ndarray, obj_mask: np.ndarray,
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Paste the object pixels (``obj_mask`` == 254) of ``obj_image`` into copies of ``image`` /
    ``label`` with their bounding box at a uniformly random position; pasted pixels get label 254.

    Returns ``(image, label, pasted)``; ``pasted`` is False when the mask holds no object pixel
    (or the box does not fit), and then the inputs come back unchanged.
    """
    box = object_bbox(obj_mask)
    if box is None:
        return image, label, False
    y0, x0, y1, x1 = box
    bh, bw = y1 - y0, x1 - x0
    if bh > label.shape[0] or bw > label.shape[1]:
        return image, label, False
    y = int(rng.integers(0, label.shape[0] - bh + 1))
    x = int(rng.integers(0, label.shape[1] - bw + 1))
    where = obj_mask[y0:y1, x0:x1] == OBJECT
    image, label = image.copy(), label.copy()
    image[y:y + bh, x:x + bw][where] = obj_image[y0:y1, x0:x1][where]
    label[y:y + bh, x:x + bw][where] = OBJECT
    return image, label, True


@dataclass
class RoadPlacement:
    """Objects pasted on the road (see :func:`paste_on_road`).

    ``share`` of the pasted objects go on the road (0: none, the paper's way); an object standing
    at the frame's bottom row is ``height_at_bottom`` (a range, drawn uniformly) × the frame's
    height tall, and smaller towards the horizon in proportion to its row's distance from it;
    ``min_height`` px is the smallest object pasted; ``soft_edge`` (σ in px, 0: hard) feathers the
    object's outline; ``shadow`` (0–1) darkens an ellipse of road under it by up to that fraction.
    ``rows``: ``"any"`` draws the contact row among all rows below the horizon (a row without road, or
    one where the object would be under ``min_height``, places nothing and the caller falls back to
    the usual paste: far rows are under-represented); ``"feasible"`` only among the road rows that can
    hold the object. ``horizon_quantile``: the horizon is the row above which that fraction of the
    road pixels lies (0: the topmost road pixel, which a stray road blob can put at the top).
    """

    share: float = 0.0
    height_at_bottom: Tuple[float, float] = (0.04, 0.3)
    min_height: int = 6
    soft_edge: float = 0.0
    shadow: float = 0.0
    rows: str = "any"
    horizon_quantile: float = 0.0


def _object_box(obj_image: np.ndarray, obj_mask: np.ndarray):
    box = object_bbox(obj_mask)
    if box is None:
        return None
    y0, x0, y1, x1 = box
    return obj_image[y0:y1, x0:x1], obj_mask[y0:y1, x0:x1]


def _cast_shadow(image: np.ndarray, centre_xy, half_axes, strength: float, box, inside: np.ndarray) -> None:
    """Darken a soft ellipse of ``image`` in place, not on the object (``inside``, the object's pixels
    within its ``box`` (y0, x0, y1, x1)). Only the window the blurred ellipse can reach is touched:
    OpenCV's float Gaussian kernel reaches 4 σ, so the margin holds all of it."""
    h, w = image.shape[:2]
    sigma = max(1.0, half_axes[1] / 2)
    cx, cy = int(centre_xy[0]), int(centre_xy[1])
    ax, ay = max(1, int(half_axes[0])), max(1, int(half_axes[1]))
    margin = int(np.ceil(4 * sigma)) + 2
    top, bottom = max(0, cy - ay - margin), min(h, cy + ay + margin + 1)
    left, right = max(0, cx - ax - margin), min(w, cx + ax + margin + 1)
    shade = np.zeros((bottom - top, right - left), np.float32)
    cv2.ellipse(shade, (cx - left, cy - top), (ax, ay), 0, 0, 360, 1.0, -1)
    shade = cv2.GaussianBlur(shade, (0, 0), sigma) * strength
    y0, x0, y1, x1 = box
    oy0, ox0, oy1, ox1 = max(y0, top), max(x0, left), min(y1, bottom), min(x1, right)
    if oy0 < oy1 and ox0 < ox1:
        shade[oy0 - top:oy1 - top, ox0 - left:ox1 - left][inside[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]] = 0.0
    region = image[top:bottom, left:right]
    region[:] = np.clip(region.astype(np.float32) * (1.0 - shade[..., None]) + 0.5, 0, 255).astype(np.uint8)


def paste_on_road(image: np.ndarray, label: np.ndarray, road: np.ndarray, obj_image: np.ndarray,
                  obj_mask: np.ndarray, placement: RoadPlacement, rng: np.random.Generator):
    """Paste an object standing on the road of a whole frame → ``(image, label, box)``.

    The horizon is taken as the topmost road row ``y_h`` (where the road ends in the distance; with
    ``placement.horizon_quantile`` a low quantile of the road rows). A row ``y`` below it is drawn
    uniformly (far rows as often as near ones: small obstacles are the hard case; with
    ``placement.rows`` "feasible" only among the road rows that hold an object of ``min_height``), then
    a road pixel of that row: the object's contact point (the middle of its
    bottom edge). On a flat road seen by a level pinhole camera an object's image height is
    proportional to ``y − y_h``, so the object is scaled to ``f · H · (y − y_h) / (H − y_h)`` px
    with ``f`` drawn from ``height_at_bottom``. Object pixels (after feathering: where the blend
    weight is ≥ ½) get label 254; the shadow is road and keeps its label. ``box`` is
    (y0, x0, y1, x1) of the pasted object, or None when nothing was pasted (no road, no object,
    or an object smaller than ``min_height`` at the drawn row); the inputs then come back unchanged.
    """
    piece = _object_box(obj_image, obj_mask)
    per_row = np.count_nonzero(road, axis=1)
    rows = np.flatnonzero(per_row)
    if piece is None or rows.size == 0:
        return image, label, None
    h, w = label.shape
    horizon = int(rows[0])
    if placement.horizon_quantile > 0:
        horizon = int(np.searchsorted(np.cumsum(per_row) / per_row.sum(), placement.horizon_quantile))
    fraction = float(rng.uniform(*placement.height_at_bottom))

    def height_at(y):
        return np.round(fraction * h * (y - horizon) / max(1, h - horizon)).astype(int)

    if placement.rows == "feasible":
        rows = rows[rows > horizon]
        heights = height_at(rows)
        rows = rows[(heights >= placement.min_height) & (heights <= rows + 1)]
        if rows.size == 0:
            return image, label, None
        y = int(rows[rng.integers(rows.size)])
    else:
        y = int(rng.integers(horizon, h))
    target_h = int(height_at(y))
    xs = np.flatnonzero(road[y])
    if target_h < placement.min_height or xs.size == 0:
        return image, label, None
    x = int(xs[rng.integers(xs.size)])
    piece_image, piece_mask = piece
    target_w = max(1, int(round(piece_mask.shape[1] * target_h / piece_mask.shape[0])))
    if target_h > h or target_w > w:
        return image, label, None
    piece_image = resize_rgb(piece_image, (target_w, target_h))
    alpha = (resize_labels(piece_mask, (target_w, target_h)) == OBJECT).astype(np.float32)
    y1 = y + 1
    y0 = y1 - target_h
    x0 = min(max(0, x - target_w // 2), w - target_w)
    x1 = x0 + target_w
    if y0 < 0:
        return image, label, None
    # the feathering reaches 3 σ beyond the object's box (its outline touches the box on every side)
    margin = int(np.ceil(3 * placement.soft_edge)) if placement.soft_edge > 0 else 0
    if margin:
        alpha = cv2.GaussianBlur(np.pad(alpha, margin), (0, 0), placement.soft_edge)
        piece_image = np.pad(piece_image, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    wy0, wx0, wy1, wx1 = max(0, y0 - margin), max(0, x0 - margin), min(h, y1 + margin), min(w, x1 + margin)
    ay, ax = wy0 - (y0 - margin), wx0 - (x0 - margin)
    alpha = alpha[ay:ay + wy1 - wy0, ax:ax + wx1 - wx0]
    piece_image = piece_image[ay:ay + wy1 - wy0, ax:ax + wx1 - wx0]
    image, label = image.copy(), label.copy()
    inside = alpha >= 0.5
    if placement.shadow > 0:
        strength = placement.shadow * float(rng.uniform(0.5, 1.0))
        _cast_shadow(image, ((x0 + x1) / 2, y), (0.6 * target_w, max(2.0, 0.12 * target_h)), strength,
                     (wy0, wx0, wy1, wx1), inside)
    region = image[wy0:wy1, wx0:wx1].astype(np.float32)
    blended = region * (1.0 - alpha[..., None]) + piece_image.astype(np.float32) * alpha[..., None]
    image[wy0:wy1, wx0:wx1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    label[wy0:wy1, wx0:wx1][inside] = OBJECT
    return image, label, (y0, x0, y1, x1)


def crop_around(image: np.ndarray, label: np.ndarray, box, size_hw, rng: np.random.Generator, pad_rgb=(0, 0, 0)):
    """A random ``size_hw`` window among those that hold ``box`` whole (padded as
    :func:`random_crop_pad` where the frame is smaller); None when the box does not fit."""
    y0, x0, y1, x1 = box
    h, w = label.shape
    ch, cw = size_hw
    if y1 - y0 > ch or x1 - x0 > cw:
        return None
    ys = (max(0, y1 - ch), min(y0, h - ch)) if h > ch else (0, 0)
    xs = (max(0, x1 - cw), min(x0, w - cw)) if w > cw else (0, 0)
    top, left = int(rng.integers(ys[0], ys[1] + 1)), int(rng.integers(xs[0], xs[1] + 1))
    image, label = image[top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
    image, label = _pad(image, label, size_hw, pad_rgb)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _flip(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array[:, ::-1])


def scale_pair(image: np.ndarray, mask: np.ndarray, factor: float):
    """Scale by ``factor`` (sizes truncated as the official ``random_scale``; at least 1 px)."""
    if factor == 1.0:
        return image, mask
    h, w = mask.shape
    size = (max(1, int(w * factor)), max(1, int(h * factor)))
    return resize_rgb(image, size), resize_labels(mask, size)


def jitter_colour(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor uniform in [1 − s, 1 + s]."""
    if strength <= 0:
        return image
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = image.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray[..., None]) * s + gray[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


@dataclass
class OutlierExposure:
    """Builds one training sample from an inlier and an outlier image (see the module docstring).

    ``crop_size`` and ``inlier_size`` are (height, width) and (width, height) respectively, as
    NumPy and OpenCV name them; ``pad_rgb`` is the mean colour (the normalisation mean × 255).
    """

    crop_size: Tuple[int, int]
    pad_rgb: Tuple[int, int, int]
    inlier_size: Optional[Tuple[int, int]] = None
    flip_prob: float = 0.5
    scales: Sequence[float] = OFFICIAL_OUTLIER_SCALES
    relative_scale: float = 1.0
    paste_prob: float = 1.0
    object_flip_prob: float = 0.0
    object_colour_jitter: float = 0.0
    road: RoadPlacement = field(default_factory=RoadPlacement)

    def _resize_flip(self, image, label, road, rng):
        if self.inlier_size is not None:
            image, label = resize_rgb(image, self.inlier_size), resize_labels(label, self.inlier_size)
            road = None if road is None else resize_labels(road, self.inlier_size)
        if rng.random() < self.flip_prob:
            image, label = _flip(image), _flip(label)
            road = None if road is None else _flip(road)
        return image, label, road

    def inlier(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        image, label, _ = self._resize_flip(image, label, None, rng)
        image, label = random_crop_pad(image, label, self.crop_size, rng, self.pad_rgb)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def _augment_object(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        image, mask = scale_pair(image, mask, self.relative_scale)
        if rng.random() < self.object_flip_prob:
            image, mask = _flip(image), _flip(mask)
        return jitter_colour(image, self.object_colour_jitter, rng), mask

    def outlier(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        """→ (scaled object image, its mask, context image, context label), all at ``crop_size``."""
        image, mask = self._augment_object(image, mask, rng)
        factor = float(self.scales[int(rng.integers(len(self.scales)))])
        scaled_image, scaled_mask = pad_center_crop(*scale_pair(image, mask, factor), self.crop_size, self.pad_rgb)
        context_image, context_label = pad_center_crop(image, mask, self.crop_size, self.pad_rgb)
        return scaled_image, scaled_mask, context_image, context_label

    def _on_road(self, inlier_image, inlier_label, road, outlier_image, outlier_mask, rng):
        """The sample with the object on the road, or None (then the caller pastes the usual way)."""
        image, label, road = self._resize_flip(inlier_image, inlier_label, road, rng)
        obj_image, obj_mask = self._augment_object(outlier_image, outlier_mask, rng)
        image, label, box = paste_on_road(image, label, road, obj_image, obj_mask, self.road, rng)
        cropped = None if box is None else crop_around(image, label, box, self.crop_size, rng, self.pad_rgb)
        if cropped is None:
            return None
        context, context_label = pad_center_crop(obj_image, obj_mask, self.crop_size, self.pad_rgb)
        return {"image": cropped[0], "label": cropped[1], "context": context, "context_label": context_label,
                "pasted": True, "on_road": True}

    def __call__(self, inlier_image, inlier_label, outlier_image, outlier_mask, rng: np.random.Generator,
                 road: Optional[np.ndarray] = None):
        """→ dict ``image``, ``label`` (the mixed inlier crop), ``context``, ``context_label``, ``pasted``,
        ``on_road`` (whether the object stands on the road; an on-road draw that finds no place falls
        back to the usual paste, so the realised share is below ``road.share``: metrics.csv logs it).

        ``road``: the inlier frame's road mask (its size, nonzero = road), for the on-road share.
        """
        if road is not None and self.road.share > 0 and rng.random() < self.road.share * self.paste_prob:
            sample = self._on_road(inlier_image, inlier_label, road, outlier_image, outlier_mask, rng)
            if sample is not None:
                return sample
        image, label = self.inlier(inlier_image, inlier_label, rng)
        obj_image, obj_mask, context, context_label = self.outlier(outlier_image, outlier_mask, rng)
        pasted = False
        if rng.random() < self.paste_prob:
            image, label, pasted = paste_objects(image, label, obj_image, obj_mask, rng)
        return {"image": image, "label": label, "context": context, "context_label": context_label,
                "pasted": pasted, "on_road": False}
