"""Anomaly objects: connected regions of the anomaly map above the calibrated threshold.

Pixels with score > threshold (inside a region such as the drivable corridor) are grouped in
8-connected components; components closer than ``merge_gap_px`` are one object (a tyre seen as two
blobs stays one); objects smaller than ``min_area_px`` are dropped. Each object has its box, area,
mean / max score and the closed-set class it was mistaken for (the majority label under it).
:func:`project_objects` adds where it stands on the ground (distance, width, height, footprint).
"""

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .ground_projection import GroundProjector

#: contact points this close behind the nearest one are its front line (metres, fraction of its distance)
FRONT_DEPTH_M, FRONT_DEPTH_FRACTION = 0.5, 0.1

__all__ = ["GroundFootprint", "AnomalyObject", "ObjectMap", "find_anomaly_objects", "project_objects"]


@dataclass(frozen=True)
class GroundFootprint:
    """Where a projected object meets the ground (optical frame of the camera, metres)."""
    distance_m: float  # horizontal distance to its nearest contact point
    contact: Tuple[float, float, float]  # the middle of its contact line
    width_m: float  # lateral extent of its front contact line
    height_m: float  # height of its top row over the contact line (a standing object's height)
    area_m2: float  # area of the convex hull of its pixels' ground points (flat objects: their footprint)
    #: N×3 ground points of its contact line (the lowest pixel of each column), for a costmap
    contact_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False, compare=False)


@dataclass(frozen=True)
class AnomalyObject:
    index: int  # its value in ObjectMap.ids
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1 / y1 exclusive
    area_px: int
    mean_score: float
    max_score: float
    mistaken_for: int  # closed-set train id under most of its pixels
    ground: Optional[GroundFootprint] = None

    @property
    def center(self) -> Tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


@dataclass
class ObjectMap:
    """The objects of one frame and H×W int32 ``ids`` (0: no object; else an object's ``index``);
    ``ids`` may be a scaled copy of the boxes' frame: ids pixel = box pixel × ``scale``."""
    objects: List[AnomalyObject]
    ids: np.ndarray
    scale: float = 1.0

    def mask(self, indices: Optional[Sequence[int]] = None) -> np.ndarray:
        """H×W bool pixels of all objects, or of those with ``indices``."""
        if indices is None:
            return self.ids > 0
        lookup = np.zeros(max(max((o.index for o in self.objects), default=0), max(indices, default=0)) + 1, bool)
        lookup[list(indices)] = True  # indices of dropped objects are off the map already
        return lookup[self.ids]

    def mono8(self, indices: Sequence[int], size: Tuple[int, int]) -> np.ndarray:
        """mono8 image of (width, height) ``size``: 255 on the pixels of the objects with ``indices``."""
        image = np.zeros(self.ids.shape, np.uint8)
        wanted = set(indices)
        for obj in self.objects:  # box by box: objects are small, the frame is not
            if obj.index in wanted:
                x0, y0 = (int(v * self.scale) for v in obj.box[:2])
                x1, y1 = (int(np.ceil(v * self.scale)) for v in obj.box[2:])
                window = self.ids[y0:y1, x0:x1]
                image[y0:y1, x0:x1][window == obj.index] = 255
        if image.shape[::-1] != tuple(size):
            image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_NEAREST)
        return image


def _grouping(mask: np.ndarray, merge_gap_px: int) -> np.ndarray:
    """Component id of every pixel after bridging gaps up to ``merge_gap_px``."""
    grouping = mask.view(np.uint8)
    if merge_gap_px > 0:
        size = 2 * merge_gap_px + 1
        grouping = cv2.dilate(grouping, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    _, ids = cv2.connectedComponents(grouping, connectivity=8, ltype=cv2.CV_32S)
    return ids


def find_anomaly_objects(score: np.ndarray, labels: np.ndarray, threshold: float,
                         region: Optional[np.ndarray] = None, min_area_px: int = 200,
                         merge_gap_px: int = 3) -> ObjectMap:
    """Objects of score > ``threshold`` inside ``region`` (H×W bool; None: the whole frame)."""
    if score.shape != labels.shape or score.ndim != 2:
        raise ValueError(f"score {score.shape} and labels {labels.shape} must be H×W maps of one size")
    if region is not None and region.shape != score.shape:
        raise ValueError(f"region {region.shape} must have the score's shape {score.shape}")
    mask = score > threshold
    if region is not None:
        mask &= region
    ids = np.zeros(score.shape, np.int32)
    points = cv2.findNonZero(mask.view(np.uint8))  # (x, y) pairs, row by row; faster than np.nonzero
    if points is None:
        return ObjectMap([], ids)
    points = points.reshape(-1, 2)
    xs, ys = points[:, 0], points[:, 1]
    component = _grouping(np.ascontiguousarray(mask), merge_gap_px)[ys, xs]
    area = np.bincount(component)
    keep = area >= max(1, min_area_px)
    keep[0] = False
    kept = np.flatnonzero(keep)
    if not len(kept):
        return ObjectMap([], ids)
    remap = np.zeros(len(area), np.int32)  # component → object index 1..n (0: dropped)
    remap[kept] = np.arange(1, len(kept) + 1)
    index = remap[component]
    chosen = index > 0  # the pixels of kept objects only, from here on (noise is often most pixels)
    index, xs, ys = index[chosen], xs[chosen], ys[chosen]
    ids[ys, xs] = index
    order = np.argsort(index, kind="stable")
    index, xs, ys = index[order], xs[order], ys[order]
    values = score[ys, xs]
    starts = np.searchsorted(index, np.arange(1, len(kept) + 1))  # reduceat: from start to next start
    x0, x1 = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
    y0, y1 = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
    maxima, sums = np.maximum.reduceat(values, starts), np.add.reduceat(values.astype(np.float64), starts)
    votes = np.bincount(index.astype(np.int64) * 256 + labels[ys, xs], minlength=(len(kept) + 1) * 256)
    votes = votes.reshape(-1, 256)
    objects = [AnomalyObject(i + 1, (int(x0[i]), int(y0[i]), int(x1[i]) + 1, int(y1[i]) + 1), int(area[c]),
                             float(sums[i] / area[c]), float(maxima[i]), int(votes[i + 1].argmax()))
               for i, c in enumerate(kept)]
    return ObjectMap(objects, ids)


def _column_extremes(ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per object and column: (object index, column, lowest pixel's row, highest pixel's row), sorted by
    object and column. The lowest pixels are where a standing object meets the ground (its contact
    line); every pixel lies between the two of its column."""
    points = cv2.findNonZero((ids > 0).view(np.uint8))
    if points is None:
        empty = np.zeros(0, np.int32)
        return empty, empty, empty, empty
    xs, ys = points.reshape(-1, 2).T
    owner = ids[ys, xs]
    order = np.lexsort((ys, xs, owner))
    owner, xs, ys = owner[order], xs[order], ys[order]
    new = np.ones(len(xs), bool)
    new[1:] = (owner[1:] != owner[:-1]) | (xs[1:] != xs[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(xs) - 1)
    return owner[first], xs[first], ys[last], ys[first]


def _footprint(contact: np.ndarray, contact_level: np.ndarray, tops_level: np.ndarray) -> Optional[dict]:
    """Where one object stands, from the ground points of its lowest (``contact``, optical frame and
    level frame) and highest (``tops_level``) pixel per column; None if no contact point is on the ground."""
    on_ground = ~np.isnan(contact[:, 0])
    if not on_ground.any():
        return None  # its contact line is above the horizon or out of range
    all_contact, level = contact[on_ground], contact_level[on_ground]
    ranges = np.hypot(level[:, 0], level[:, 2])
    nearest = ranges.min()
    # the front contact line: a column whose lowest pixel is well behind the nearest point is the
    # object's side seen from above (or a sliver at its outline), not where it stands
    front = ranges <= nearest + max(FRONT_DEPTH_M, FRONT_DEPTH_FRACTION * nearest)
    front_points, front_level = all_contact[front], level[front]
    middle = front_points[np.argsort(front_level[:, 0])[len(front_points) // 2]]
    # each column's pixels project onto the ground segment between its lowest and highest pixel's
    # points (those on the ground, within range): their hull is the hull of all its pixels' points
    hull_points = np.vstack([level, tops_level[~np.isnan(tops_level[:, 0])]])[:, [0, 2]].astype(np.float32)
    area = float(cv2.contourArea(cv2.convexHull(hull_points))) if len(hull_points) >= 3 else 0.0
    return {"distance_m": float(nearest), "contact": tuple(float(v) for v in middle),
            "width_m": float(front_level[:, 0].max() - front_level[:, 0].min()), "area_m2": area,
            "contact_points": all_contact}


def project_objects(objects: ObjectMap, projector: GroundProjector, min_area_m2: float = 0.0) -> ObjectMap:
    """The objects with their ground footprint; those that cannot be projected (contact above the
    horizon, beyond the range) or with a footprint under ``min_area_m2`` are dropped."""
    h, w = objects.ids.shape
    projector = projector.at_size(w, h)
    owner, columns, bottom, top = _column_extremes(objects.ids)
    contact, tops = projector.at_pixels(columns, bottom), projector.at_pixels(columns, top)
    contact_level, tops_level = projector.level(contact), projector.level(tops)  # all objects at once
    found = []
    for obj in objects.objects:
        start, end = np.searchsorted(owner, [obj.index, obj.index + 1])
        footprint = _footprint(contact[start:end], contact_level[start:end], tops_level[start:end])
        if footprint is not None:
            found.append((obj, footprint, (float(np.mean(columns[start:end])), float(obj.box[1]))))
    # heights: the rays of every object's top row at its mean column, in one undistortion
    heights = projector.heights_above_ground(np.array([f["contact"] for _, f, _ in found]).reshape(-1, 3),
                                             np.array([top for _, _, top in found]).reshape(-1, 2))
    kept = []
    for (obj, footprint, _), height in zip(found, heights):
        ground = GroundFootprint(footprint["distance_m"], footprint["contact"], footprint["width_m"], float(height),
                                 footprint["area_m2"], footprint["contact_points"])
        if ground.area_m2 >= min_area_m2:
            kept.append(replace(obj, ground=ground))
    if len(kept) == len(objects.objects):
        return ObjectMap(kept, objects.ids)
    ids = objects.ids.copy()
    kept_indices = {obj.index for obj in kept}
    for obj in (o for o in objects.objects if o.index not in kept_indices):  # dropped: off the map, box by box
        x0, y0, x1, y1 = obj.box
        window = ids[y0:y1, x0:x1]
        window[window == obj.index] = 0
    return ObjectMap(kept, ids)
