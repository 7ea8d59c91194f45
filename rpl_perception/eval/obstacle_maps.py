"""The obstacle outputs as maps the evaluation scores beside the pixel scores (``eval --obstacles``).

For the model's own score ``S`` (with its calibrated threshold) each frame adds

* ``S+corridor``: the score restricted to the drivable corridor (outside: the frame's minimum);
* ``S+corridor_prior``: the soft prior, lowered by up to :data:`PRIOR_PENALTY` × the display range's
  span with the distance to the corridor (:func:`rpl_perception.corridor.corridor_prior`; the setting
  with the best mean FPR95 of those ``scripts/corridor_study.py`` compares on the development suite);
* ``objects``: the node's object output (:func:`rpl_perception.obstacles.find_obstacles`, one frame, no
  persistence) as a 0 / 1 map: its component metrics (sIoU, PPV, mean F1 at threshold 0.5) judge the
  objects; its pixel AP / FPR95 are those of one operating point.
"""

from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from ..corridor import corridor_prior, drivable_corridor, restrict_to_corridor
from ..obstacles import ObstacleSettings, find_obstacles

__all__ = ["OBJECTS", "OBJECT_THRESHOLD", "PRIOR_PENALTY", "PRIOR_FALLOFF", "obstacle_score_names", "obstacle_maps"]

OBJECTS = "objects"
#: the objects map is 0 / 1: anything above this is an object pixel
OBJECT_THRESHOLD = 0.5
#: the soft prior's full penalty (× the display range's span), reached this far from the corridor
#: (fraction of the image height)
PRIOR_PENALTY, PRIOR_FALLOFF = 0.25, 0.25


def obstacle_score_names(score: str) -> Tuple[str, str, str]:
    return f"{score}+corridor", f"{score}+corridor_prior", OBJECTS


def obstacle_maps(score_name: str, score: np.ndarray, labels: np.ndarray, threshold: float,
                  display_range: Tuple[float, float], settings: Optional[ObstacleSettings] = None,
                  classes=None) -> Dict[str, np.ndarray]:
    """The three maps of :func:`obstacle_score_names` for one frame (``labels``: predicted train ids)."""
    settings = settings or ObstacleSettings()
    kwargs = {} if classes is None else {"classes": classes}
    corridor = drivable_corridor(labels, settings.corridor, **kwargs)
    hard, soft, objects_name = obstacle_score_names(score_name)
    obstacles = find_obstacles(score, labels, threshold, settings, **kwargs)
    objects = obstacles.objects.mask().astype(np.float32)
    if objects.shape != score.shape:
        objects = cv2.resize(objects, score.shape[::-1], interpolation=cv2.INTER_NEAREST)
    span = PRIOR_PENALTY * float(display_range[1] - display_range[0])
    return {hard: restrict_to_corridor(score, corridor),
            soft: corridor_prior(score, corridor, penalty=span, falloff=PRIOR_FALLOFF),
            objects_name: objects}
