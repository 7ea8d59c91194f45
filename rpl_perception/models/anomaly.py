"""The whole per-frame computation as one module: normalise → network → labels + anomaly score.

This is what every backend runs (PyTorch directly, ONNX Runtime / TensorRT after export), so
normalisation, argmax, the score and its Gaussian smoothing happen on the network's device.
Host code only resizes frames to the network size and back (:mod:`rpl_perception.segmenter`).
"""

from typing import Sequence

import torch
from torch import nn

from ..scoring import BASELINE_SCORES, SCORES, closed_set_score, gaussian_smooth
from .rpl import RPLSegmenter

__all__ = ["AnomalyModel", "ImageNormalisation"]


class ImageNormalisation(nn.Module):
    """(B, H, W, 3) uint8 RGB → (B, 3, H, W) float, (x/255 − mean)/std folded into one multiply-add."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).to(self.scale.dtype) * self.scale + self.shift


class AnomalyModel(nn.Module):
    """(B, H, W, 3) uint8 RGB at the network size → labels (B, H, W) uint8, anomaly (B, H, W) float32.

    ``labels`` are the argmax of the closed-set logits ỹ over the inlier classes (train ids);
    ``anomaly`` is the chosen score (see :mod:`rpl_perception.scoring`), smoothed with σ
    ``smoothing_sigma``. With ``return_logits`` the closed-set logits (B, C, H, W) come third.
    """

    def __init__(self, network: RPLSegmenter, *, num_inlier: int, mean: Sequence[float],
                 std: Sequence[float], score: str = "rpl_energy", smoothing_sigma: float = 1.0,
                 return_logits: bool = False):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
        if score == "rpl_energy" and not network.has_branch:
            raise ValueError("score 'rpl_energy' needs RPL weights; this model has none "
                             f"(closed-set baselines: {', '.join(BASELINE_SCORES)})")
        if smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma must be >= 0, got {smoothing_sigma}")
        self.network = network
        self.num_inlier = num_inlier
        self.score = score
        self.smoothing_sigma = float(smoothing_sigma)
        self.return_logits = return_logits
        self.normalise = ImageNormalisation(mean, std)

    def forward(self, images: torch.Tensor):
        out = self.network(self.normalise(images))
        closed = out.closed[:, : self.num_inlier]
        labels = closed.argmax(dim=1).to(torch.uint8)
        logits = out.rpl[:, : self.num_inlier] if self.score == "rpl_energy" else closed
        anomaly = gaussian_smooth(closed_set_score(logits.float(), self.score),
                                  self.smoothing_sigma)
        if self.return_logits:
            return labels, anomaly, out.closed
        return labels, anomaly
