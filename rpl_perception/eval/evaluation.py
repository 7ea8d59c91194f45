"""Streaming metrics of one evaluation run (:class:`Evaluation`) and what it gives
(:class:`EvaluationResult`): memory does not grow with the number of frames, apart from a few
numbers per frame (latency, the sIoU / PPV of each component) and a fixed number of downscaled
worst frames for the report (``scripts/bench_eval_memory.py`` measures it)."""

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..labels import NUM_CITYSCAPES_CLASSES
from .frames import EvalFrame
from .metrics import ComponentMetricAccumulator, ConfusionMatrix, PixelMetricAccumulator, pixel_metrics, to_float16

__all__ = ["PREVIEW_SIDE", "WorstFrame", "EvaluationResult", "Evaluation", "downscale_preview", "latency_summary",
           "class_count"]

#: longest side of the worst frames kept for the report (bounded memory, enough for a figure)
PREVIEW_SIDE = 640


@dataclass
class WorstFrame:
    """A frame kept for the report, downscaled to at most :data:`PREVIEW_SIDE` pixels."""
    name: str
    ap: float  # per-frame AP of the primary score
    image: Optional[np.ndarray]
    label: np.ndarray
    score: np.ndarray


@dataclass
class EvaluationResult:
    """What :meth:`Evaluation.result` gives: JSON-able summary plus arrays for the plots."""
    summary: dict  # mode, source, settings, frame counts, metrics per score, semantic, delivery, timing
    #: per score: (distinct float16 scores ascending, in-distribution counts, anomaly counts)
    histograms: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: per score: PixelMetricAccumulator.curves() (precision / recall, ROC points)
    curves: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    worst_frames: List[WorstFrame] = field(default_factory=list)

    @property
    def metrics(self) -> Dict[str, dict]:
        return self.summary["metrics"]


def downscale_preview(array: np.ndarray, interpolation: int) -> np.ndarray:
    h, w = array.shape[:2]
    factor = PREVIEW_SIDE / max(h, w)
    if factor >= 1:
        return array.copy()
    return cv2.resize(array, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=interpolation)


class Evaluation:
    """Streaming accumulators of one evaluation run.

    Per score: pixel AP / FPR95 / AUROC (:class:`~rpl_perception.eval.metrics.PixelMetricAccumulator`)
    and, where a threshold is known, SMIYC component sIoU / PPV / F1 (with ``component_sizes``
    (min_pred_size, min_gt_size); None turns them off). mIoU where frames carry semantic ground truth.
    The ``num_worst`` frames with the lowest per-frame AP of ``primary`` (default: the first score)
    are kept, downscaled, for the report's overlays. Every frame, labelled or not, also goes to each of
    ``observers`` (``add(frame, score_name, score_map, labels, latency_s)``), e.g. the
    :class:`~rpl_perception.eval.drive.DriveRecorder` that writes the overlay video.
    """

    def __init__(self, scores: Sequence[str], *, thresholds: Optional[Dict[str, float]] = None,
                 component_sizes: Optional[Tuple[int, int]] = (500, 100), num_classes: int = NUM_CITYSCAPES_CLASSES,
                 primary: Optional[str] = None, num_worst: int = 4, observers: Sequence = ()):
        if not scores:
            raise ValueError("Evaluation needs at least one score name")
        self.scores = tuple(scores)
        self.primary = primary or self.scores[0]
        if self.primary not in self.scores:
            raise ValueError(f"primary score {self.primary!r} is not among {self.scores}")
        self.pixel = {name: PixelMetricAccumulator() for name in self.scores}
        thresholds = thresholds or {}
        self.component = {}
        if component_sizes is not None:
            self.component = {name: ComponentMetricAccumulator(thresholds[name], *component_sizes)
                              for name in self.scores if thresholds.get(name) is not None}
        self.confusion = ConfusionMatrix(num_classes)
        self.num_worst = num_worst
        self._worst: List[tuple] = []  # max-heap on AP via (-ap, order, WorstFrame)
        self._order = itertools.count()
        self.num_frames = 0  # frames with predictions
        self.num_labelled = 0  # of them, with anomaly ground truth
        self.num_semantic = 0  # of them, with semantic ground truth
        self.observers = tuple(observers)

    def update(self, frame: EvalFrame, scores: Dict[str, np.ndarray], labels: Optional[np.ndarray] = None,
               latency_s: Optional[float] = None) -> None:
        """Add one frame's predictions: score maps (all of :attr:`scores`), predicted train ids and, in
        live mode, the frame's latency."""
        missing = [name for name in self.scores if name not in scores]
        if missing:
            raise ValueError(f"frame {frame.name}: no map for score(s) {missing}; got {sorted(scores)}")
        self.num_frames += 1
        for observer in self.observers:
            observer.add(frame, self.primary, scores[self.primary], labels, latency_s)
        if frame.label is not None:
            self.num_labelled += 1
            for name in self.scores:
                self.pixel[name].update(scores[name], frame.label)
                if name in self.component:
                    self.component[name].update(scores[name], frame.label)
            self._keep_if_worst(frame, scores[self.primary])
        if frame.semantic is not None and labels is not None:
            self.num_semantic += 1
            self.confusion.update(labels, frame.semantic)

    def _keep_if_worst(self, frame: EvalFrame, score: np.ndarray) -> None:
        if self.num_worst <= 0 or not ((frame.label == 0).any() and (frame.label == 1).any()):
            return  # per-frame AP needs both classes
        ap = pixel_metrics(to_float16(score), frame.label)["ap"]
        if len(self._worst) == self.num_worst and -self._worst[0][0] <= ap:
            return
        kept = WorstFrame(frame.name, ap, None if frame.image is None else downscale_preview(frame.image, cv2.INTER_AREA),
                          downscale_preview(frame.label, cv2.INTER_NEAREST), downscale_preview(score, cv2.INTER_AREA))
        heapq.heappush(self._worst, (-ap, next(self._order), kept))
        if len(self._worst) > self.num_worst:
            heapq.heappop(self._worst)

    def result(self, **summary) -> EvaluationResult:
        """Metrics so far; ``summary`` keys (mode, source, settings, delivery, timing) are merged in."""
        metrics, histograms, curves = {}, {}, {}
        for name in self.scores:
            entry = {}
            if self.num_labelled:
                try:
                    entry.update(self.pixel[name].compute())
                    curves[name] = self.pixel[name].curves()
                except ValueError as exc:  # e.g. no anomaly pixel in the whole run
                    entry["error"] = str(exc)
                histograms[name] = self.pixel[name].histogram()
            if name in self.component and self.num_labelled:
                comp = self.component[name]
                entry.update({f"component_{k}": v for k, v in comp.compute().items()},
                             component_threshold=comp.threshold)
            metrics[name] = entry
        semantic = None
        if self.num_semantic:
            result = self.confusion.compute()
            semantic = {"miou": result["miou"], "iou": [None if np.isnan(v) else float(v) for v in result["iou"]]}
        worst = [entry[2] for entry in sorted(self._worst, key=lambda e: -e[0])]
        base = {"num_frames": self.num_frames, "num_labelled": self.num_labelled, "scores": list(self.scores),
                "primary_score": self.primary, "metrics": metrics, "semantic": semantic,
                "worst_frames": [{"name": w.name, "ap": w.ap} for w in worst]}
        return EvaluationResult({**summary, **base}, histograms, curves, worst)


def class_count(meta) -> int:
    """The semantic class count of a model's file (``CheckpointMeta``); Cityscapes' without one."""
    return NUM_CITYSCAPES_CLASSES if meta is None else meta.num_inlier


def latency_summary(latencies_s: Sequence[float]) -> Dict[str, Optional[float]]:
    """p50 / p95 / mean / max of latencies in milliseconds (numpy's linear percentile); None if empty."""
    if len(latencies_s) == 0:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}
