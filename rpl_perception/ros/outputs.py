"""What the node publishes for one frame: mask and heatmap always, colour images while someone looks."""

from typing import Dict, Tuple

import numpy as np
from sensor_msgs.msg import Image

from ..image_codec import fill_image
from ..visualize import colorize_labels, overlay

__all__ = ["anomaly_mask", "publish_outputs"]


def anomaly_mask(anomaly: np.ndarray, threshold: float) -> np.ndarray:
    """0/255 mono8 mask, with the rule of the overlay's contour: score > threshold."""
    return (anomaly > threshold).astype(np.uint8) * np.uint8(255)


def publish_outputs(publishers: Dict[str, object], header, rgb: np.ndarray, prediction, threshold: float,
                    display_range: Tuple[float, float], alpha: float) -> None:
    """``publishers`` by output name (:data:`.topics.OUTPUTS`); every message carries ``header``."""

    def send(name, pixels, encoding):
        publishers[name].publish(fill_image(Image(header=header), pixels, encoding))

    send("anomaly", prediction.anomaly, "32FC1")
    send("anomaly_mask", anomaly_mask(prediction.anomaly, threshold), "mono8")
    send("semantic", prediction.labels, "mono8")
    # the colour images cost time and bandwidth: only for a viewer that is listening
    if publishers["semantic_color"].get_subscription_count():
        send("semantic_color", colorize_labels(prediction.labels), "rgb8")
    if publishers["overlay"].get_subscription_count():
        low, high = display_range
        send("overlay", overlay(rgb, prediction.anomaly, low, high, threshold, alpha=alpha), "rgb8")
