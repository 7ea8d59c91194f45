"""Obstacles for a planner, from one frame's prediction: corridor → objects → ground, ROS-free.

:func:`find_obstacles` runs the drivable corridor (:mod:`.corridor`), the anomaly objects inside
it (:mod:`.anomaly_objects`) and, with a :class:`~.ground_projection.GroundProjector`, their
ground footprints, on a copy of the maps at most ``work_width`` wide (the maps come from a network
about 1024 px wide, so nothing is lost, and a 1920×1080 frame costs a quarter). Boxes and areas are
given in camera pixels. :func:`confidence_image` maps the score to the mono8 confidence costmaps read.
"""

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from .anomaly_objects import ObjectMap, find_anomaly_objects, project_objects
from .corridor import CorridorSettings, drivable_corridor
from .ground_projection import GroundProjector
from .labels import CITYSCAPES_CLASSES

__all__ = ["ObstacleSettings", "Obstacles", "find_obstacles", "confidence_image", "work_size"]


@dataclass(frozen=True)
class ObstacleSettings:
    corridor: CorridorSettings = field(default_factory=CorridorSettings)
    restrict_to_corridor: bool = True  # objects only inside the corridor
    min_area_px: int = 200  # camera pixels
    min_area_m2: float = 0.0  # projected objects only
    merge_gap_px: int = 6  # camera pixels
    work_width: int = 960

    def __post_init__(self):
        if self.min_area_px < 1 or self.merge_gap_px < 0 or self.min_area_m2 < 0 or self.work_width < 16:
            raise ValueError(f"obstacle settings out of range: min_area_px {self.min_area_px} (>= 1), "
                             f"merge_gap_px {self.merge_gap_px} (>= 0), min_area_m2 {self.min_area_m2} (>= 0), "
                             f"work_width {self.work_width} (>= 16)")


@dataclass
class Obstacles:
    """``objects`` (boxes and areas in camera pixels; ``objects.ids`` at the work size),
    ``corridor`` at the work size (None when not used), ``scale`` = work size / camera size."""
    objects: ObjectMap
    corridor: Optional[np.ndarray]
    scale: float


def work_size(width: int, height: int, work_width: int) -> Tuple[int, int]:
    scale = min(1.0, work_width / width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def find_obstacles(score: np.ndarray, labels: np.ndarray, threshold: float,
                   settings: ObstacleSettings = ObstacleSettings(), projector: Optional[GroundProjector] = None,
                   classes: Sequence[str] = CITYSCAPES_CLASSES) -> Obstacles:
    """The obstacles of one frame (``score``, ``labels``: H×W maps at the camera size)."""
    h, w = score.shape
    size = work_size(w, h, settings.work_width)
    if size != (w, h):
        score = cv2.resize(score, size, interpolation=cv2.INTER_AREA)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    scale = size[0] / w
    corridor = drivable_corridor(labels, settings.corridor, classes) if settings.restrict_to_corridor else None
    objects = find_anomaly_objects(score, labels, threshold, corridor,
                                   min_area_px=max(1, round(settings.min_area_px * scale ** 2)),
                                   merge_gap_px=round(settings.merge_gap_px * scale))
    if projector is not None:
        objects = project_objects(objects, projector.at_size(*size), settings.min_area_m2)
    if scale != 1.0:
        inverse = 1.0 / scale
        objects.objects = [replace(o, box=tuple(int(round(v * inverse)) for v in o.box),
                                   area_px=int(round(o.area_px * inverse ** 2))) for o in objects.objects]
        objects.scale = scale
    return Obstacles(objects, corridor, scale)


def confidence_image(score: np.ndarray, threshold: float, display_range: Tuple[float, float]) -> np.ndarray:
    """mono8 confidence, piecewise linear in the score: display minimum → 0, the calibrated
    threshold → 128, display maximum → 255 (a costmap thresholding at 128 uses the calibration)."""
    low, high = display_range
    low, high = min(low, threshold - 1e-6), max(high, threshold + 1e-6)
    score = np.asarray(score, np.float32)
    if not score.size:  # e.g. the scores of no objects (OpenCV refuses empty arrays)
        return np.zeros(score.shape, np.uint8)
    below_scale, above_scale = 127.0 / (threshold - low), 127.0 / (high - threshold)
    # addWeighted rounds and saturates (convertScaleAbs would take |x|): below the display minimum 0,
    # below the threshold at most 127, above it at least 128; one pass each over the float map
    value = cv2.addWeighted(score, below_scale, score, 0.0, -low * below_scale, dtype=cv2.CV_8U)
    above = cv2.addWeighted(score, above_scale, score, 0.0, 128.0 - threshold * above_scale, dtype=cv2.CV_8U)
    cv2.copyTo(above, cv2.compare(score, float(threshold), cv2.CMP_GT), value)
    return value
