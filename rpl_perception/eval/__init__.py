"""Evaluation: anomaly / segmentation metrics and readers for the benchmark datasets (no torch here).

The anomaly evaluation of a model on a bag or a dataset has three modes, one module each:

* **offline** (:func:`.offline.evaluate_offline`): frames from a bag or a dataset
  (:mod:`.frames`) go straight into the core, as fast as it runs, on the backend that deploys.
  The network runs once per batch and every score the model supports is computed from the same
  logits (:class:`.offline.MultiScorePredictor`), so the RPL score and the closed-set baselines
  are compared on identical network outputs.
* **live** (:func:`.live.evaluate_live`): the bag is replayed over DDS at its recorded rate to a
  running ``anomaly_node``; accuracy of what came back, delivered-frame ratio and latency.
* **recorded** (:func:`.recorded.evaluate_recorded`): a bag that already holds the node's
  outputs next to the ground truth is scored as it is.

Metrics stream (:class:`.evaluation.Evaluation`): memory does not grow with the number of frames,
apart from a few numbers per frame and a fixed number of downscaled worst frames for the report.
Scores are compared at the ground truth's resolution.
"""

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
