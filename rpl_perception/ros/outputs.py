"""What the node publishes for one frame: each output only while something subscribes to it."""

from typing import Dict, Tuple

import numpy as np
from sensor_msgs.msg import Image

from ..image_codec import fill_image
from ..visualize import colorize_labels, overlay
from .demand import is_read

__all__ = ["anomaly_mask", "publish_outputs"]


def anomaly_mask(anomaly: np.ndarray, threshold: float) -> np.ndarray:
    """0/255 mono8 mask, with the rule of the overlay's contour: score > threshold."""
    return (anomaly > threshold).astype(np.uint8) * np.uint8(255)


def publish_outputs(publishers: Dict[str, object], header, rgb: np.ndarray, prediction, threshold: float,
                    display_range: Tuple[float, float], alpha: float) -> None:
    """``publishers`` by output name (:data:`.topics.OUTPUTS`); every message carries ``header``."""

    def send(name, pixels, encoding):
        publishers[name].publish(fill_image(Image(header=header), pixels, encoding))

    # each output is computed and converted only for its own subscribers (see .demand)
    if is_read(publishers["anomaly"]):
        send("anomaly", prediction.anomaly, "32FC1")
    if is_read(publishers["anomaly_mask"]):
        send("anomaly_mask", anomaly_mask(prediction.anomaly, threshold), "mono8")
    if is_read(publishers["semantic"]):
        send("semantic", prediction.labels, "mono8")
    if is_read(publishers["semantic_color"]):
        send("semantic_color", colorize_labels(prediction.labels), "rgb8")
    if is_read(publishers["overlay"]):
        low, high = display_range
        send("overlay", overlay(rgb, prediction.anomaly, low, high, threshold, alpha=alpha), "rgb8")
