"""Evaluation: anomaly / segmentation metrics and readers for the benchmark datasets (no torch)."""

from .datasets import DATASET_KINDS, DatasetLayoutError, LabelledImageDataset, Sample, detect_kind, open_dataset
from .metrics import (
    SIOU_THRESHOLDS,
    ComponentMetricAccumulator,
    ConfusionMatrix,
    PixelMetricAccumulator,
    component_metrics,
    miou,
    pixel_metrics,
    to_float16,
)

__all__ = [
    "pixel_metrics", "PixelMetricAccumulator", "to_float16", "component_metrics",
    "ComponentMetricAccumulator", "SIOU_THRESHOLDS", "miou", "ConfusionMatrix",
    "open_dataset", "detect_kind", "DATASET_KINDS", "DatasetLayoutError", "LabelledImageDataset", "Sample",
]
