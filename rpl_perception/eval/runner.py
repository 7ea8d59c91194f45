"""Anomaly evaluation of the segmenter on a bag or a dataset, in three modes.

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
"""

import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..image import resize_labels, resize_scores
from .bags import bag_topics, label_topic_for, match_by_stamp, output_topics, read_images, semantic_label_topic_for
from .metrics import ComponentMetricAccumulator, ConfusionMatrix, PixelMetricAccumulator, pixel_metrics, to_float16

__all__ = [
    "EvalFrame", "MultiScorePredictor", "available_scores", "score_settings", "Evaluation",
    "EvaluationResult", "WorstFrame", "frames_from_bag", "frames_from_dataset", "evaluate_offline",
    "evaluate_recorded", "evaluate_live", "NodeOptions", "BagTopics", "latency_summary",
]

log = logging.getLogger(__name__)

#: longest side of the worst frames kept for the report (bounded memory, enough for a figure)
PREVIEW_SIDE = 640


@dataclass
class EvalFrame:
    """One frame to evaluate; ground truth is optional (a frame without it is only predicted)."""
    name: str
    image: Optional[np.ndarray]  # H×W×3 uint8 RGB; None where a recording lacks the camera topic
    label: Optional[np.ndarray] = None  # anomaly ground truth: 0 in, 1 anomaly, other = void
    semantic: Optional[np.ndarray] = None  # Cityscapes train ids, 255 void
    stamp_ns: Optional[int] = None


# ----------------------------------------------------------------------------- prediction

def available_scores(segmenter) -> Tuple[str, ...]:
    """Every score the model can give: the RPL score first where it has a branch, then the baselines."""
    from ..scoring import BASELINE_SCORES, SCORES

    return SCORES if segmenter.network.has_branch else BASELINE_SCORES


def score_settings(meta, score: str) -> Tuple[Optional[Tuple[float, float]], Optional[float]]:
    """(display range, anomaly threshold) a checkpoint records for ``score``; None where it has none.

    Component metrics need the threshold and are left out for a score without one.
    """
    from ..segmenter import FALLBACK_DISPLAY_RANGE

    display = meta.display_range.get(score) or FALLBACK_DISPLAY_RANGE.get(score)
    threshold = meta.anomaly_threshold.get(score)
    return (tuple(display) if display else None), (None if threshold is None else float(threshold))


class MultiScorePredictor:
    """Every requested anomaly score from one forward pass per batch, on the deployed backend.

    The segmenter's model is extended to output all scores at once
    (:meth:`~rpl_perception.models.AnomalyModel.with_scores`: one network pass, each score
    computed exactly as the single-score model computes it), and that graph runs on the backend
    the segmenter's :class:`~rpl_perception.backends.DeploymentSpec` names (``spec`` overrides
    it): ``eval --backend onnxruntime`` measures ONNX Runtime, ``--backend tensorrt --precision
    fp16`` a TensorRT fp16 engine. A segmenter without a spec runs in PyTorch on its backend's
    device. Frames are resized by the segmenter's ``preprocess`` and the outputs back with the
    core's helpers; for the segmenter's own score the map equals ``predict`` on the same backend.
    """

    def __init__(self, segmenter, scores: Optional[Sequence[str]] = None, *, spec=None):
        supported = available_scores(segmenter)
        scores = tuple(supported if scores is None else scores)
        unknown = [s for s in scores if s not in supported]
        if unknown or not scores:
            raise ValueError(f"cannot compute score(s) {unknown or scores!r} with this model; available: "
                             f"{', '.join(supported)}" + ("" if segmenter.network.has_branch
                                                          else " (rpl_energy needs RPL weights)"))
        self.segmenter = segmenter
        self.scores = scores
        self.model = segmenter.model.with_scores(scores).eval()
        spec = spec if spec is not None else segmenter.deployment
        if spec is None:
            from ..backends import TorchBackend

            device = str(getattr(segmenter.backend, "device", "cpu"))
            self.backend = TorchBackend(self.model, device=device if device.startswith("cuda") else "cpu")
        else:
            self.backend = spec.create_backend(self.model, size=segmenter.network_size)

    def describe(self) -> str:
        return self.backend.describe()

    def predict_batch(self, images: Sequence[np.ndarray], sizes: Optional[Sequence[Tuple[int, int]]] = None
                      ) -> List[Tuple[np.ndarray, Dict[str, np.ndarray]]]:
        """Frames → [(labels H×W uint8, {score: H×W float32})] at each frame's ``sizes`` (w, h),
        default the camera size."""
        batch, camera_sizes = self.segmenter.preprocess(images)
        sizes = camera_sizes if sizes is None else sizes
        labels, anomaly = self.backend(batch)  # anomaly: (B, S, H, W), one channel per score
        if anomaly.ndim != 4 or anomaly.shape[1] != len(self.scores):
            raise RuntimeError(f"the backend returned score maps of shape {anomaly.shape}; expected "
                               f"(batch, {len(self.scores)}, H, W) for {', '.join(self.scores)}")
        return [(resize_labels(labels[i], size),
                 {name: resize_scores(anomaly[i, k], size) for k, name in enumerate(self.scores)})
                for i, size in enumerate(sizes)]


# ----------------------------------------------------------------------------- streaming metrics

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


def _downscale(array: np.ndarray, interpolation: int) -> np.ndarray:
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
    are kept, downscaled, for the report's overlays.
    """

    def __init__(self, scores: Sequence[str], *, thresholds: Optional[Dict[str, float]] = None,
                 component_sizes: Optional[Tuple[int, int]] = (500, 100), num_classes: int = 19,
                 primary: Optional[str] = None, num_worst: int = 4):
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

    def update(self, frame: EvalFrame, scores: Dict[str, np.ndarray], labels: Optional[np.ndarray] = None) -> None:
        """Add one frame's predictions: score maps (all of :attr:`scores`) and predicted train ids."""
        missing = [name for name in self.scores if name not in scores]
        if missing:
            raise ValueError(f"frame {frame.name}: no map for score(s) {missing}; got {sorted(scores)}")
        self.num_frames += 1
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
        kept = WorstFrame(frame.name, ap, None if frame.image is None else _downscale(frame.image, cv2.INTER_AREA),
                          _downscale(frame.label, cv2.INTER_NEAREST), _downscale(score, cv2.INTER_AREA))
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


def latency_summary(latencies_s: Sequence[float]) -> Dict[str, Optional[float]]:
    """p50 / p95 / mean / max of latencies in milliseconds (numpy's linear percentile); None if empty."""
    if len(latencies_s) == 0:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}


# ----------------------------------------------------------------------------- frame sources

@dataclass
class BagTopics:
    """The topics of one camera in a bag (defaults: the siblings of the camera topic)."""
    image: str
    label: str
    semantic: str
    anomaly: str  # node output (recorded mode)
    semantic_prediction: str  # node output (recorded mode)

    @classmethod
    def for_camera(cls, image_topic: str, label_topic: Optional[str] = None) -> "BagTopics":
        outputs = output_topics(image_topic)
        return cls(image_topic, label_topic or label_topic_for(image_topic), semantic_label_topic_for(image_topic),
                   outputs["anomaly"], outputs["semantic"])


def frames_from_bag(bag, image_topic: str, label_topic: Optional[str] = None) -> Tuple[Iterator[EvalFrame], int]:
    """Camera frames of a bag with their ground truth (matched by header stamp) and how many there are.

    Ground-truth topics are optional: a bag with camera frames only is predicted, not scored.
    """
    topics = BagTopics.for_camera(image_topic, label_topic)
    available = bag_topics(bag)
    if topics.image not in available:
        raise ValueError(f"bag {bag} has no topic {topics.image}; its topics: {', '.join(sorted(available))}")
    wanted = [t for t in (topics.image, topics.label, topics.semantic) if t in available]

    def frames():
        index = 0
        # in camera order (frames without ground truth wait for none), ground truth up to 8 frames late
        for group in match_by_stamp(read_images(bag, wanted, rgb_topics=[topics.image]), wanted, max_pending=8,
                                    ordered=True):
            if topics.image not in group.images:
                log.warning("ground truth at stamp %d has no camera frame; skipped", group.stamp_ns)
                continue
            camera = group.images[topics.image]
            truth = {t: group.images[t].pixels if t in group.images else None for t in (topics.label, topics.semantic)}
            yield EvalFrame(_frame_name(index, group.stamp_ns), camera.pixels, truth[topics.label],
                            truth[topics.semantic], group.stamp_ns)
            index += 1

    return frames(), available[topics.image][1]


def frames_from_dataset(dataset) -> Tuple[Iterator[EvalFrame], int]:
    """Samples of a :class:`~rpl_perception.eval.datasets.LabelledImageDataset` as frames.

    Cityscapes-style sets (no anomaly classes) give semantic ground truth, anomaly sets anomaly
    ground truth.
    """
    from .datasets import DATASET_KINDS

    semantic = DATASET_KINDS[dataset.kind].component_sizes is None

    def frames():
        for sample in dataset:
            yield EvalFrame(sample.name, sample.image, None if semantic else sample.label,
                            sample.label if semantic else None)

    return frames(), len(dataset)


def _frame_name(index: int, stamp_ns: int) -> str:
    return f"#{index} stamp {stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}"


def _batched(iterable, size: int):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# ----------------------------------------------------------------------------- modes

def evaluate_offline(segmenter, frames: Iterable[EvalFrame], *, total: Optional[int] = None,
                     scores: Optional[Sequence[str]] = None, batch_size: int = 1,
                     component_sizes: Optional[Tuple[int, int]] = (500, 100), num_worst: int = 4,
                     source: str = "", progress: bool = True) -> EvaluationResult:
    """Run the core on every frame (as fast as it goes) and score every requested score.

    Score maps are compared at the ground truth's size (the camera size where a frame has none).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1; got {batch_size}")
    predictor = MultiScorePredictor(segmenter, scores)
    settings = {name: score_settings(segmenter.meta, name) for name in predictor.scores}
    primary = segmenter.score if segmenter.score in predictor.scores else predictor.scores[0]
    evaluation = Evaluation(predictor.scores, thresholds={n: s[1] for n, s in settings.items()},
                            component_sizes=component_sizes, primary=primary, num_worst=num_worst)
    started, network_s = time.perf_counter(), 0.0
    with tqdm(total=total, desc="eval offline", unit="frame", disable=not progress) as bar:
        for batch in _batched(frames, batch_size):
            sizes = [_truth_size(frame) for frame in batch]
            tic = time.perf_counter()
            outputs = predictor.predict_batch([frame.image for frame in batch], sizes)
            network_s += time.perf_counter() - tic
            for frame, (labels, maps) in zip(batch, outputs):
                evaluation.update(frame, maps, labels)
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    n = max(evaluation.num_frames, 1)
    return evaluation.result(
        mode="offline", source=source,
        settings=_model_settings(segmenter, settings, batch_size=batch_size, backend=predictor.describe()),
        timing={"wall_s": elapsed, "frames_per_s": evaluation.num_frames / elapsed if elapsed else None,
                "predict_ms_per_frame": 1e3 * network_s / n})


def evaluate_recorded(bag, image_topic: str, *, label_topic: Optional[str] = None, score: str = "node",
                      meta=None, component_sizes: Optional[Tuple[int, int]] = (500, 100), num_worst: int = 4,
                      progress: bool = True) -> EvaluationResult:
    """Score a bag that holds the node's outputs (``anomaly``, optionally ``semantic``) next to the
    ground truth, matched by header stamp.

    ``score`` names what the node published (e.g. ``energy``); with the checkpoint ``meta`` its
    display range and threshold are used for overlays and component metrics. Delivery counts the
    labelled frames with an anomaly output; where the camera topic is in the bag too, latency is
    each output's bag time minus its camera frame's bag time (as the recorder received them).
    """
    from tqdm import tqdm

    topics = BagTopics.for_camera(image_topic, label_topic)
    available = bag_topics(bag)
    for needed in (topics.label, topics.anomaly):
        if needed not in available:
            raise ValueError(f"bag {bag} has no topic {needed}: a recorded evaluation needs the ground truth "
                             f"and the node's anomaly output; its topics: {', '.join(sorted(available))}")
    wanted = [t for t in (topics.image, topics.label, topics.semantic, topics.anomaly, topics.semantic_prediction)
              if t in available]
    display, threshold = score_settings(meta, score) if meta is not None else (None, None)
    evaluation = Evaluation([score], thresholds={score: threshold}, component_sizes=component_sizes,
                            num_worst=num_worst)
    delivered, undelivered, latencies = 0, 0, []
    started = time.perf_counter()
    groups = match_by_stamp(read_images(bag, wanted, rgb_topics=[topics.image]), wanted)
    for group in tqdm(groups, total=available[topics.label][1], desc="eval recorded", unit="frame",
                      disable=not progress):
        msgs = group.images
        if topics.label not in msgs:
            continue  # an output without ground truth: nothing to score
        if topics.anomaly not in msgs:
            undelivered += 1
            continue
        delivered += 1
        label = msgs[topics.label].pixels
        anomaly = msgs[topics.anomaly].pixels
        _check_same_size(anomaly, label, group.stamp_ns)
        frame = EvalFrame(_frame_name(delivered + undelivered - 1, group.stamp_ns),
                          msgs[topics.image].pixels if topics.image in msgs else None,
                          label, msgs[topics.semantic].pixels if topics.semantic in msgs else None, group.stamp_ns)
        predicted = msgs[topics.semantic_prediction].pixels if topics.semantic_prediction in msgs else None
        evaluation.update(frame, {score: anomaly}, predicted)
        if topics.image in msgs:
            latencies.append((msgs[topics.anomaly].log_time_ns - msgs[topics.image].log_time_ns) / 1e9)
    total = delivered + undelivered
    return evaluation.result(
        mode="recorded", source=str(bag),
        settings={"score": score, "display_range": {score: display}, "threshold": {score: threshold},
                  "topics": vars(topics)},
        delivery={"frames_sent": total, "frames_delivered": delivered,
                  "delivered_ratio": delivered / total if total else None,
                  "latency": latency_summary(latencies), "latency_clock": "bag time"},
        timing={"wall_s": time.perf_counter() - started})


def _check_same_size(anomaly: np.ndarray, label: Optional[np.ndarray], stamp: int) -> None:
    if label is not None and anomaly.shape != label.shape:
        raise ValueError(f"stamp {stamp}: the node's anomaly map {anomaly.shape} and the label {label.shape} "
                         "differ in size; the node publishes at the camera size, so the bag's camera frames "
                         "and labels must share one size")


def _truth_size(frame: EvalFrame) -> Tuple[int, int]:
    for truth in (frame.label, frame.semantic):
        if truth is not None:
            return truth.shape[1], truth.shape[0]
    return frame.image.shape[1], frame.image.shape[0]


def _model_settings(segmenter, settings, **extra) -> dict:
    return {"architecture": segmenter.meta.architecture, "model_score": segmenter.score,
            "network_size": list(segmenter.network_size), "smoothing_sigma": segmenter.smoothing_sigma,
            "display_range": {name: s[0] for name, s in settings.items()},
            "threshold": {name: s[1] for name, s in settings.items()}, **extra}


# ----------------------------------------------------------------------------- live

@dataclass
class NodeOptions:
    """How to start ``anomaly_node`` for a live evaluation (None: the model's own value)."""
    model: str = "default"
    score: Optional[str] = None
    network_size: Optional[Tuple[int, int]] = None
    smoothing_sigma: Optional[float] = None
    device: str = "cpu"
    #: the node's input QoS reliability (best_effort or reliable); None: the node's default
    qos_reliability: Optional[str] = None
    #: the node's backend, precision and cache folder (None: the node's defaults)
    backend: Optional[str] = None
    precision: Optional[str] = None
    cache_dir: Optional[str] = None

    @classmethod
    def from_args(cls, args) -> "NodeOptions":
        """From the options of :func:`rpl_perception.commands.add_model_arguments` (and ``--node-qos``)."""
        cache_dir = getattr(args, "cache_dir", None)
        return cls(args.model, args.score, args.size, args.smoothing_sigma, args.device,
                   getattr(args, "node_qos", None), getattr(args, "backend", None),
                   getattr(args, "precision", None), None if cache_dir is None else str(cache_dir))

    def command(self, image_topic: str) -> List[str]:
        """The node's command line: this Python, ``--ros-args`` with one ``-p`` per parameter."""
        import sys

        params = {"image_topics": f"['{image_topic}']", "model": self.model, "device": self.device}
        if self.score:
            params["score"] = self.score
        if self.network_size:
            params["network_width"], params["network_height"] = self.network_size
        if self.smoothing_sigma is not None:
            params["smoothing_sigma"] = float(self.smoothing_sigma)
        if self.qos_reliability is not None:
            params["qos_reliability"] = self.qos_reliability
        for name in ("backend", "precision", "cache_dir"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        command = [sys.executable, "-m", "rpl_perception.ros.node", "--ros-args"]
        for name, value in params.items():
            command += ["-p", f"{name}:={value}"]
        return command


class _Received(NamedTuple):
    output: str  # "anomaly" or "semantic"
    stamp_ns: int
    pixels: np.ndarray
    received_s: float  # perf_counter
    received_wall_ns: int


class _LiveSession:
    """A ROS 2 context of our own with the replay publisher and the output subscriptions,
    spun in a background thread; received outputs land in a queue for the main thread."""

    def __init__(self, topics: "BagTopics", domain_id: Optional[int]):
        import queue
        import threading

        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from ..ros.codec import image_to_array
        from .bags import stamp_to_ns

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("rpl_eval_replay", context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20, reliability=ReliabilityPolicy.RELIABLE)
        # reliable publishes to best-effort and reliable subscribers alike
        self.publisher = self.node.create_publisher(Image, topics.image, reliable)
        self.received: "queue.Queue[_Received]" = queue.Queue()
        self.topics = topics

        def on_output(output, msg):
            pixels = image_to_array(msg)
            self.received.put(_Received(output, stamp_to_ns(msg.header.stamp),
                                        pixels.astype(pixels.dtype.newbyteorder("=")),
                                        time.perf_counter(), time.time_ns()))

        for output, topic in (("anomaly", topics.anomaly), ("semantic", topics.semantic_prediction)):
            self.node.create_subscription(Image, topic, lambda msg, o=output: on_output(o, msg), reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="rpl_eval_spin", daemon=True)
        self._spinner.start()
        self._image_type = Image

    def _spin(self):
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def ready(self) -> bool:
        """The node subscribes to our camera topic and publishes its anomaly topic."""
        return (self.publisher.get_subscription_count() > 0
                and self.node.count_publishers(self.topics.anomaly) > 0)

    def publish(self, rgb: np.ndarray, stamp_ns: int, frame_id: str) -> None:
        from ..ros.codec import fill_image
        from .bags import ns_to_stamp

        msg = self._image_type()
        msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp(stamp_ns)
        msg.header.frame_id = frame_id
        self.publisher.publish(fill_image(msg, rgb, "rgb8"))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._spinner.join(timeout=5.0)


class _NodeProcess:
    """``anomaly_node`` as a child process; its log goes to a temporary file shown on failure."""

    def __init__(self, command: List[str], env: dict):
        import subprocess
        import tempfile

        self.log = tempfile.TemporaryFile(mode="w+b")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"anomaly_node exited with status {self.process.returncode} before the "
                               f"evaluation ended; its log:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # the node's clean shutdown path
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def evaluate_live(bag, image_topic: str, *, label_topic: Optional[str] = None, score: str = "node", meta=None,
                  node_options: Optional[NodeOptions] = None, launch: bool = True, timeout_s: float = 10.0,
                  startup_timeout_s: float = 180.0, record=None, rate_scale: float = 1.0, lockstep: bool = False,
                  component_sizes: Optional[Tuple[int, int]] = (500, 100), num_worst: int = 4,
                  domain_id: Optional[int] = None, progress: bool = True) -> EvaluationResult:
    """Replay a bag's camera frames over DDS, at the recorded rate and with their original stamps,
    to ``anomaly_node`` (started here unless ``launch`` is False), and score what comes back.

    ``lockstep``: instead of the recorded rate, send each frame once the previous one's outputs
    have come (or timed out): every frame is served whatever the machine's speed, so the metrics
    cover every labelled frame; latency is then the node's unloaded latency.
    Outputs are matched to frames by header stamp; a frame whose ``anomaly`` output has not come
    ``timeout_s`` seconds after it was sent counts as lost (the node keeps only the newest frame,
    so a node slower than the camera drops frames by design: the delivered ratio shows it).
    Latency is receipt of the ``anomaly`` output minus publication of the frame, both on this
    process's monotonic clock. ``record``: a new bag with the sent frames, their ground truth and
    the received outputs (bag time = send / receipt wall time), which ``evaluate_recorded`` reads.
    ``domain_id`` defaults to ``ROS_DOMAIN_ID`` of the environment; a launched node gets the same.
    """
    import os

    from tqdm import tqdm

    from .bags import ImageBagWriter

    if not rate_scale > 0:
        raise ValueError(f"rate scale must be > 0; got {rate_scale}")
    if not timeout_s > 0:
        raise ValueError(f"timeout must be > 0 s; got {timeout_s}")
    frames, total = frames_from_bag(bag, image_topic, label_topic)
    topics = BagTopics.for_camera(image_topic, label_topic)
    env = dict(os.environ)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    elif env.get("ROS_DOMAIN_ID", "").strip():
        domain_id = int(env["ROS_DOMAIN_ID"])
    display, threshold = score_settings(meta, score) if meta is not None else (None, None)
    evaluation = Evaluation([score], thresholds={score: threshold}, component_sizes=component_sizes,
                            num_worst=num_worst)
    process = _NodeProcess((node_options or NodeOptions()).command(image_topic), env) if launch else None
    session = writer = None
    sent, latencies = 0, []
    pending: Dict[int, Tuple[EvalFrame, float]] = {}  # stamp → (frame with preview image, send time)
    outputs: Dict[int, Dict[str, _Received]] = {}
    started = time.perf_counter()
    try:
        session = _LiveSession(topics, domain_id)
        _wait_until_ready(session, process, startup_timeout_s, topics.image)
        if record is not None:
            writer = ImageBagWriter(record).__enter__()

        def settle(now: float, final: bool = False) -> None:
            """Take received outputs; score frames whose outputs are complete, drop expired ones."""
            while not session.received.empty():
                item = session.received.get_nowait()
                if item.stamp_ns in pending:
                    outputs.setdefault(item.stamp_ns, {})[item.output] = item
                    if writer is not None:
                        writer.write(topics.anomaly if item.output == "anomaly" else topics.semantic_prediction,
                                     item.pixels, item.stamp_ns, encoding="32FC1" if item.output == "anomaly"
                                     else "mono8", log_time_ns=item.received_wall_ns)
            for stamp in list(pending):
                got = outputs.get(stamp, {})
                frame, sent_at = pending[stamp]
                expired = final or now - sent_at > timeout_s
                if len(got) == 2 or (expired and "anomaly" in got):
                    anomaly = got["anomaly"]
                    latencies.append(anomaly.received_s - sent_at)
                    semantic = got["semantic"].pixels if "semantic" in got else None
                    _check_same_size(anomaly.pixels, frame.label, stamp)
                    evaluation.update(frame, {score: anomaly.pixels}, semantic)
                if len(got) == 2 or expired:
                    del pending[stamp]
                    outputs.pop(stamp, None)

        first_stamp = first_send = None
        for frame in tqdm(frames, total=total, desc="eval live", unit="frame", disable=not progress):
            if first_stamp is None:
                first_stamp, first_send = frame.stamp_ns, time.perf_counter()
            if lockstep:  # the previous frame's outputs (or its timeout) first, then this one at once
                while pending:
                    if process is not None:
                        process.check_alive()
                    settle(time.perf_counter())
                    time.sleep(0.005)
            else:
                due = first_send + (frame.stamp_ns - first_stamp) / 1e9 / rate_scale
                while (now := time.perf_counter()) < due:
                    settle(now)
                    time.sleep(min(0.005, due - now))
            if process is not None:
                process.check_alive()
            session.publish(frame.image, frame.stamp_ns, "camera")
            sent_at, sent_wall = time.perf_counter(), time.time_ns()
            sent += 1
            if writer is not None:
                writer.write(topics.image, frame.image, frame.stamp_ns, encoding="rgb8", log_time_ns=sent_wall)
                for topic, truth in ((topics.label, frame.label), (topics.semantic, frame.semantic)):
                    if truth is not None:
                        writer.write(topic, truth, frame.stamp_ns, encoding="mono8", log_time_ns=sent_wall)
            preview = EvalFrame(frame.name, _downscale(frame.image, cv2.INTER_AREA), frame.label, frame.semantic,
                                frame.stamp_ns)
            pending[frame.stamp_ns] = (preview, sent_at)
            settle(time.perf_counter())
        deadline = time.perf_counter() + timeout_s
        while pending and time.perf_counter() < deadline:
            settle(time.perf_counter())
            time.sleep(0.01)
        settle(time.perf_counter(), final=True)
    finally:
        if writer is not None:
            writer.__exit__(None, None, None)
        if session is not None:
            session.close()
        if process is not None:
            process.stop()
    delivered = len(latencies)
    return evaluation.result(
        mode="live", source=str(bag),
        settings={"score": score, "display_range": {score: display}, "threshold": {score: threshold},
                  "topics": vars(topics), "node": vars(node_options or NodeOptions()) if launch else "already running",
                  "rate_scale": None if lockstep else rate_scale, "lockstep": lockstep, "timeout_s": timeout_s},
        delivery={"frames_sent": sent, "frames_delivered": delivered,
                  "delivered_ratio": delivered / sent if sent else None,
                  "latency": latency_summary(latencies), "latency_clock": "publish → anomaly received"},
        timing={"wall_s": time.perf_counter() - started})




def _wait_until_ready(session: _LiveSession, process: Optional[_NodeProcess], timeout_s: float, topic: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not session.ready():
        if process is not None:
            process.check_alive()
        if time.perf_counter() > deadline:
            where = f"; its log:\n{process.tail()}" if process is not None else \
                " (is anomaly_node running with image_topics including it, in this ROS_DOMAIN_ID?)"
            raise TimeoutError(f"no anomaly_node serving {topic} after {timeout_s:.0f} s{where}")
        time.sleep(0.1)
    time.sleep(0.5)  # let both sides finish matching the endpoints before the first frame
