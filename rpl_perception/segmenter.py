"""The inference core: camera frames in, semantic labels and anomaly heatmaps out.

Knows nothing of ROS. Per batch: validate and resize frames to the network size on the host
(``preprocess``), run the network and scoring on the backend's device (``infer``), resize the
label map (nearest) and score map (bilinear) back to each camera's resolution (``postprocess``).
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .checkpoint import DEFAULT_CHECKPOINT, CheckpointMeta, load_model
from .image import as_rgb, resize_labels, resize_rgb, resize_scores
from .models import AnomalyModel, RPLNetwork
from .scoring import SCORES, generic_display_range

__all__ = ["AnomalySegmenter", "Prediction"]

log = logging.getLogger(__name__)

@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) uint8 train ids 0..num_classes-1
    anomaly: np.ndarray  # (H, W) float32, higher = more anomalous
    score: str  # which score ``anomaly`` holds (see rpl_perception.scoring)


class AnomalySegmenter:
    """Semantic segmentation + pixel-wise anomaly score for RGB frames.

    >>> seg = AnomalySegmenter.from_pretrained()
    >>> pred = seg.predict(rgb)          # rgb: H×W×3 uint8
    >>> pred.labels.shape == rgb.shape[:2], pred.score
    """

    def __init__(self, network: RPLNetwork, meta: CheckpointMeta, *, score: Optional[str] = None,
                 smoothing_sigma: Optional[float] = None, network_size: Optional[Tuple[int, int]] = None,
                 device: str = "cpu", backend=None, deployment=None):
        self.meta = meta
        self.network = network
        self._warned_uncalibrated = False
        self.score = self._choose_score(score, network.has_branch, meta)
        self.smoothing_sigma = meta.smoothing_sigma if smoothing_sigma is None else float(smoothing_sigma)
        self.network_size = tuple(network_size or meta.input_size)
        divisor = network.size_divisor
        w, h = self.network_size
        if w <= 0 or h <= 0 or w % divisor or h % divisor:
            raise ValueError(f"network size {w}×{h} must be positive multiples of {divisor}")
        self.model = AnomalyModel(network, num_inlier=meta.num_inlier, mean=meta.mean, std=meta.std,
                                  score=self.score, smoothing_sigma=self.smoothing_sigma).eval()
        #: the DeploymentSpec the backend comes from (None: PyTorch on ``device``, or ``backend``)
        self.deployment = deployment
        if backend is None and deployment is None:
            from .backends import TorchBackend
            backend = TorchBackend(self.model, device=device)
        self._backend = backend

    @property
    def backend(self):
        """What runs the network: given, or created from :attr:`deployment` on first use (an
        export or engine build can take a while; evaluation never needs this one)."""
        if self._backend is None:
            self._backend = self.deployment.create_backend(self)
        return self._backend

    @backend.setter
    def backend(self, backend) -> None:
        self._backend = backend

    @staticmethod
    def _choose_score(score, has_branch, meta):
        if score is None:
            score = meta.score if (meta.score != "rpl_energy" or has_branch) else "energy"
            if not has_branch and score == "energy":
                log.warning("model has no RPL weights: the anomaly score is the closed-set energy")
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
        return score

    @classmethod
    def from_checkpoint(cls, path, **kwargs) -> "AnomalySegmenter":
        """Load a model file (see :mod:`rpl_perception.checkpoint`); kwargs as ``__init__``."""
        network, meta = load_model(Path(path))
        return cls(network, meta, **kwargs)

    @classmethod
    def from_spec(cls, spec) -> "AnomalySegmenter":
        """The model a :class:`~rpl_perception.backends.DeploymentSpec` names, with its backend
        (created on first use of :attr:`backend`)."""
        network, meta = load_model(spec.model_file)
        return cls(network, meta, score=spec.score, smoothing_sigma=spec.smoothing_sigma,
                   network_size=spec.network_size, deployment=spec)

    @classmethod
    def from_pretrained(cls, **kwargs) -> "AnomalySegmenter":
        """The embedded default model (ESPNetv2 Cityscapes, shipped with the package)."""
        return cls.from_checkpoint(DEFAULT_CHECKPOINT, **kwargs)

    @property
    def class_names(self) -> List[str]:
        return list(self.meta.class_names)

    @property
    def display_range(self) -> Tuple[float, float]:
        """The fixed score range that heatmap colours span for the active score."""
        rng = self.meta.display_range.get(self.score)
        if rng is None:
            rng = generic_display_range(self.score, self.meta.num_inlier)
            if not self._warned_uncalibrated:
                log.warning("the model file records no display range for score %r: heatmap colours "
                            "span the generic range %s; calibrate the model (scripts/make_default_model.py)",
                            self.score, rng)
                self._warned_uncalibrated = True
        return tuple(rng)

    @property
    def anomaly_threshold(self) -> float:
        """The checkpoint's default threshold for the active score (mid display range if none)."""
        if self.score in self.meta.anomaly_threshold:
            return float(self.meta.anomaly_threshold[self.score])
        low, high = self.display_range
        return (low + high) / 2

    def preprocess(self, images: Sequence[np.ndarray]):
        """Validate and resize → ((B, h, w, 3) uint8 batch at the network size, camera sizes)."""
        rgbs = [as_rgb(image) for image in images]
        sizes = [(rgb.shape[1], rgb.shape[0]) for rgb in rgbs]
        return np.stack([resize_rgb(rgb, self.network_size) for rgb in rgbs]), sizes

    def infer(self, batch: np.ndarray):
        """Network + scoring on the backend → (labels, anomaly) at the network size."""
        return self.backend(batch)

    def postprocess(self, labels: np.ndarray, anomaly: np.ndarray, sizes) -> List[Prediction]:
        return [Prediction(resize_labels(l, size), resize_scores(a, size), self.score)
                for l, a, size in zip(labels, anomaly, sizes)]

    def predict_batch(self, images: Sequence[np.ndarray]) -> List[Prediction]:
        """Predict several frames (of any sizes) in one network batch."""
        if len(images) == 0:
            return []
        batch, sizes = self.preprocess(images)
        labels, anomaly = self.infer(batch)
        return self.postprocess(labels, anomaly, sizes)

    def predict(self, image: np.ndarray) -> Prediction:
        """One H×W×3 uint8 RGB frame (or H×W gray, H×W×4 RGBA) → labels and anomaly at H×W."""
        return self.predict_batch([image])[0]
