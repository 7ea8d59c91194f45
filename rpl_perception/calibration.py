"""Display constants a model file records per score (see ``CheckpointMeta``)."""

from typing import Tuple

import numpy as np

__all__ = ["calibrate"]


def calibrate(scores: np.ndarray, labels: np.ndarray) -> Tuple[Tuple[float, float], float]:
    """(display range, anomaly threshold) of one score from pixels with labels (0 = normal).

    The display range is the 1st/99th percentile of all scores, so heatmap colours span what occurs
    on real roads; the threshold is the 95th percentile of the normal pixels' scores: 5 % of them
    flagged, a sensitive operating point that favours finding anomalies over false alarms (about
    26,000 normal pixels of a 1024×512 frame); raise it for fewer false alarms. Where no pixel is
    labelled normal it is the 95th percentile of all scores.
    """
    low, high = np.percentile(scores, [1, 99])
    normal = scores[labels == 0]
    threshold = np.percentile(normal if normal.size else scores, 95)
    return (float(low), float(high)), float(threshold)
