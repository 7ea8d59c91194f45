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

Differences from the official code, none of which changes what is learnt: the crop offset is
drawn from [0, H − h] (the official ``randint(0, H − h + 1)`` can leave one padded row); the flip
probability is a parameter (the official ``random_mirror`` flips with probability 0.8).
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from rpl_perception.image import resize_labels, resize_rgb

from .datasets import OBJECT, VOID

__all__ = ["OFFICIAL_OUTLIER_SCALES", "OutlierExposure", "random_crop_pad", "pad_center_crop", "object_bbox", "paste_objects",
           "jitter_colour", "scale_pair"]

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

    def inlier(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        if self.inlier_size is not None:
            image, label = resize_rgb(image, self.inlier_size), resize_labels(label, self.inlier_size)
        if rng.random() < self.flip_prob:
            image, label = _flip(image), _flip(label)
        image, label = random_crop_pad(image, label, self.crop_size, rng, self.pad_rgb)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def outlier(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        """→ (scaled object image, its mask, context image, context label), all at ``crop_size``."""
        image, mask = scale_pair(image, mask, self.relative_scale)
        if rng.random() < self.object_flip_prob:
            image, mask = _flip(image), _flip(mask)
        image = jitter_colour(image, self.object_colour_jitter, rng)
        factor = float(self.scales[int(rng.integers(len(self.scales)))])
        scaled_image, scaled_mask = pad_center_crop(*scale_pair(image, mask, factor), self.crop_size, self.pad_rgb)
        context_image, context_label = pad_center_crop(image, mask, self.crop_size, self.pad_rgb)
        return scaled_image, scaled_mask, context_image, context_label

    def __call__(self, inlier_image, inlier_label, outlier_image, outlier_mask, rng: np.random.Generator):
        """→ dict ``image``, ``label`` (the mixed inlier crop), ``context``, ``context_label``, ``pasted``."""
        image, label = self.inlier(inlier_image, inlier_label, rng)
        obj_image, obj_mask, context, context_label = self.outlier(outlier_image, outlier_mask, rng)
        pasted = False
        if rng.random() < self.paste_prob:
            image, label, pasted = paste_objects(image, label, obj_image, obj_mask, rng)
        return {"image": image, "label": label, "context": context, "context_label": context_label,
                "pasted": pasted}
