"""Anomaly evaluation of the segmenter on a bag or a dataset, in three modes (one module each).

* **offline** (:func:`evaluate_offline`): frames from a bag (:func:`frames_from_bag`) or a dataset
  (:func:`frames_from_dataset`) go straight into the core, as fast as it runs, on the backend
  that deploys (PyTorch, ONNX Runtime or TensorRT at the chosen precision). The network runs
  once per batch and every score of :data:`rpl_perception.scoring.SCORES` the model supports is
  computed from the same logits in the same graph (:class:`MultiScorePredictor`), so the RPL
  score and the closed-set baselines are compared on identical network outputs.
* **live** (:func:`evaluate_live`): the bag is replayed over DDS at its recorded rate to a running
  ``anomaly_node`` (rclpy, imported only here); accuracy of what came back, plus the
  delivered-frame ratio and the latency a user gets on the vehicle.
* **recorded** (:func:`evaluate_recorded`): a bag that already holds the node's ``anomaly`` (and
  ``semantic``) topics next to the ground truth is scored as it is.

Metrics stream (:class:`Evaluation`): memory does not grow with the number of frames, apart from
a few numbers per frame (latency, the sIoU / PPV of each component) and a fixed number of
downscaled worst frames for the report (``scripts/bench_eval_memory.py`` measures it).
Scores are compared at the ground truth's resolution: the core resizes scores bilinearly to the
camera size, which is the label size in every dataset here. Only :class:`MultiScorePredictor`
runs a model; reading bags and scoring recorded outputs do not.

This module gathers their public names: :mod:`.frames`, :mod:`.evaluation`, :mod:`.offline`,
:mod:`.recorded`, :mod:`.live`.
"""

from .evaluation import PREVIEW_SIDE, Evaluation, EvaluationResult, WorstFrame, latency_summary
from .frames import BagTopics, EvalFrame, frames_from_bag, frames_from_dataset
from .live import NodeOptions, evaluate_live
from .offline import MultiScorePredictor, available_scores, evaluate_offline, score_settings
from .recorded import evaluate_recorded

__all__ = [
    "EvalFrame", "MultiScorePredictor", "available_scores", "score_settings", "Evaluation",
    "EvaluationResult", "WorstFrame", "frames_from_bag", "frames_from_dataset", "evaluate_offline",
    "evaluate_recorded", "evaluate_live", "NodeOptions", "BagTopics", "latency_summary", "PREVIEW_SIDE",
]
