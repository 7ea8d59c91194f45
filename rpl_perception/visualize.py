"""Colouring masks and heatmaps for people: RViz overlays and ``predict`` outputs.

Heatmap colours map a *fixed* score range (recorded per score in the checkpoint, see
``AnomalySegmenter.display_range``) onto OpenCV's TURBO colour map, so a colour means the same
score in every frame: ``low`` and below is dark blue, ``high`` and above dark red.
"""

import cv2
import numpy as np

from .labels import CITYSCAPES_PALETTE

__all__ = ["CITYSCAPES_PALETTE", "colorize_labels", "colorize_scores", "overlay"]


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) train ids → (H, W, 3) RGB; ids outside the palette (e.g. 255 void) are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    return lut[labels]


def scores_to_unit(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map scores linearly so that ``low`` → 0 and ``high`` → 1, clipped."""
    if not high > low:
        raise ValueError(f"display range must have high > low, got ({low}, {high})")
    return np.clip((scores - low) / (high - low), 0.0, 1.0)


def colorize_scores(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) float scores → (H, W, 3) RGB heatmap on the fixed range [low, high]."""
    unit8 = np.round(scores_to_unit(scores, low, high) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(unit8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, scores: np.ndarray, low: float, high: float, threshold: float,
            alpha: float = 0.5, contour_color=(255, 255, 255)) -> np.ndarray:
    """Camera image with the heatmap blended in and the ``scores > threshold`` contour drawn."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = colorize_scores(scores, low, high)
    out = cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)
    mask = (scores > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(rgb.shape[:2]) / 400))
    cv2.drawContours(out, contours, -1, contour_color, thickness)
    return out
