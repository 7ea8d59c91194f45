"""Offline evaluation: frames go straight into the core, as fast as it runs, on the backend
that deploys (PyTorch, ONNX Runtime or TensorRT at the chosen precision).

The network runs once per batch and every score of :data:`rpl_perception.scoring.SCORES` the
model supports is computed from the same logits in the same graph (:class:`MultiScorePredictor`),
so the RPL score and the closed-set baselines are compared on identical network outputs. Scores
are compared at the ground truth's resolution: the core resizes scores bilinearly to the camera
size, which is the label size in every dataset here.
"""

import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..image import resize_labels, resize_scores
from .evaluation import Evaluation, EvaluationResult, class_count
from .frames import EvalFrame, batched
from .obstacle_maps import OBJECT_THRESHOLD, OBJECTS, obstacle_maps, obstacle_score_names

__all__ = ["MultiScorePredictor", "available_scores", "score_settings", "evaluate_offline"]


def available_scores(segmenter) -> Tuple[str, ...]:
    """Every score the model can give: the RPL score first where it has a branch, then the baselines."""
    from ..scoring import BASELINE_SCORES, SCORES

    return SCORES if segmenter.network.has_branch else BASELINE_SCORES


def score_settings(meta, score: str) -> Tuple[Optional[Tuple[float, float]], Optional[float]]:
    """(display range, anomaly threshold) a checkpoint records for ``score``; None where it has none.

    Component metrics need the threshold and are left out for a score without one.
    """
    from ..scoring import SCORES, generic_display_range

    display = meta.display_range.get(score) or (
        generic_display_range(score, meta.num_inlier) if score in SCORES else None)
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


def evaluate_offline(segmenter, frames: Iterable[EvalFrame], *, total: Optional[int] = None,
                     scores: Optional[Sequence[str]] = None, batch_size: int = 1,
                     component_sizes: Optional[Tuple[int, int]] = (500, 100), num_worst: int = 4,
                     source: str = "", progress: bool = True, observers=(),
                     obstacles: bool = False) -> EvaluationResult:
    """Run the core on every frame (as fast as it goes) and score every requested score.

    Score maps are compared at the ground truth's size (the camera size where a frame has none).
    ``observers`` see every frame's primary score (e.g. the drive's video; see :class:`Evaluation`).
    ``obstacles``: also the model score restricted to the drivable corridor (hard, soft prior) and the
    object output (:mod:`.obstacle_maps`).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1; got {batch_size}")
    predictor = MultiScorePredictor(segmenter, scores)
    settings = {name: score_settings(segmenter.meta, name) for name in predictor.scores}
    primary = segmenter.score if segmenter.score in predictor.scores else predictor.scores[0]
    thresholds = {n: s[1] for n, s in settings.items()}
    extra = _obstacle_scores(primary, settings[primary], thresholds) if obstacles else ()
    evaluation = Evaluation(predictor.scores + extra, thresholds=thresholds,
                            component_sizes=component_sizes, primary=primary, num_worst=num_worst,
                            num_classes=class_count(segmenter.meta), observers=observers)
    started, network_s = time.perf_counter(), 0.0
    with tqdm(total=total, desc="eval offline", unit="frame", disable=not progress) as bar:
        for batch in batched(frames, batch_size):
            sizes = [_truth_size(frame) for frame in batch]
            tic = time.perf_counter()
            outputs = predictor.predict_batch([frame.image for frame in batch], sizes)
            network_s += time.perf_counter() - tic
            for frame, (labels, maps) in zip(batch, outputs):
                if obstacles:
                    display, threshold = settings[primary]
                    maps.update(obstacle_maps(primary, maps[primary], labels, threshold, display,
                                              classes=segmenter.class_names))
                evaluation.update(frame, maps, labels)
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    n = max(evaluation.num_frames, 1)
    return evaluation.result(
        mode="offline", source=source,
        settings=_model_settings(segmenter, settings, batch_size=batch_size, backend=predictor.describe()),
        timing={"wall_s": elapsed, "frames_per_s": evaluation.num_frames / elapsed if elapsed else None,
                "predict_ms_per_frame": 1e3 * network_s / n})


def _obstacle_scores(primary: str, setting, thresholds: dict) -> Tuple[str, ...]:
    """The obstacle maps' names; their thresholds added to ``thresholds``."""
    display, threshold = setting
    if threshold is None or display is None:
        raise ValueError(f"the obstacle outputs need the calibrated threshold of {primary!r}; the model file "
                         "records none (calibrate it, or evaluate without --obstacles)")
    names = obstacle_score_names(primary)
    thresholds.update({names[0]: threshold, names[1]: threshold, OBJECTS: OBJECT_THRESHOLD})
    return names


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
