"""The whole per-frame computation as one module: normalise → network → labels + anomaly score.

This is what every backend runs (PyTorch directly, ONNX Runtime / TensorRT after export), so
normalisation, argmax, the score and its Gaussian smoothing happen on the network's device.
Host code only resizes frames to the network size and back (:mod:`rpl_perception.segmenter`).

The scores are always computed in float32: :class:`AnomalyScoring` switches autocast off and casts
the logits to float32 first, so a network run in fp16 (PyTorch autocast, a TensorRT fp16 engine)
still gives fp32 scores and smoothing. In the exported graph its operators are named
``/scoring/…``, which the TensorRT build pins to float32.
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..scoring import BASELINE_SCORES, SCORES, closed_set_score, gaussian_smooth
from .rpl import RPLNetwork

__all__ = ["AnomalyModel", "AnomalyScoring", "ImageNormalisation", "SCORING_SCOPE"]

#: the module name of the scoring head: ONNX node names of the scoring start with ``/scoring/``
SCORING_SCOPE = "scoring"


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


def _negative_logsumexp(logits: torch.Tensor, maximum: torch.Tensor) -> torch.Tensor:
    """−logsumexp over dim 1 given its max: −(m + log Σ exp(x − m)), PyTorch's own formula without
    its handling of infinite maxima (finite network logits), which costs time on the CPU."""
    shifted = torch.exp(logits - maximum.unsqueeze(1)).sum(dim=1)
    return -(maximum + torch.log(shifted))


class AnomalyScoring(nn.Module):
    """Closed-set logits ỹ (and the branch's ŷ) → labels uint8 and score map(s), in float32.

    ``scores`` one name: the map is (B, H, W); several (``stacked``): (B, S, H, W) in that order,
    each computed exactly as it would be alone.

    Two forms of the same values, because eager PyTorch and ONNX Runtime are fast at different
    things: eager PyTorch takes the labels and the channel maximum from one ``max(dim)`` (much
    faster than ``argmax`` over the channel axis on the CPU) and reuses that maximum in the
    spelled-out logsumexp. The traced graph keeps the plain ``argmax`` / ``logsumexp`` calls:
    ``max(dim)`` would export as two reductions, and only these calls let
    :class:`rpl_perception.export_forms.ExportForms` write the one-reduction form ONNX Runtime
    runs fastest (the max as the value at the argmax, the channel sum as a 1×1 convolution).
    The export parity tests (test/test_export.py) hold the two forms to the same values.
    """

    def __init__(self, num_inlier: int, scores: Sequence[str], smoothing_sigma: float, stacked: bool):
        super().__init__()
        self.num_inlier = num_inlier
        self.scores = tuple(scores)
        self.smoothing_sigma = float(smoothing_sigma)
        self.stacked = stacked

    def _score(self, name: str, closed: torch.Tensor, closed_max: Optional[torch.Tensor],
               rpl: Optional[torch.Tensor]) -> torch.Tensor:
        eager = closed_max is not None  # not tracing: the export keeps the library calls
        if name == "rpl_energy":
            assert rpl is not None
            return _negative_logsumexp(rpl, rpl.amax(dim=1)) if eager else closed_set_score(rpl, "energy")
        if name == "energy" and eager:  # reusing the labels' max
            return _negative_logsumexp(closed, closed_max)
        if name == "max_logit" and eager:
            return -closed_max
        return closed_set_score(closed, name)

    def forward(self, closed: torch.Tensor, rpl: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(closed.device.type, enabled=False):
            closed = closed[:, : self.num_inlier].float()
            if torch.jit.is_tracing():
                labels, closed_max = closed.argmax(dim=1), None
            else:
                closed_max, labels = closed.max(dim=1)
            rpl = None if rpl is None else rpl[:, : self.num_inlier].float()
            maps = [gaussian_smooth(self._score(name, closed, closed_max, rpl), self.smoothing_sigma)
                    for name in self.scores]
            anomaly = torch.stack(maps, dim=1) if self.stacked else maps[0]
        return labels.to(torch.uint8), anomaly


class AnomalyModel(nn.Module):
    """(B, H, W, 3) uint8 RGB at the network size → labels (B, H, W) uint8, anomaly (B, H, W) float32.

    ``labels`` are the argmax of the closed-set logits ỹ over the inlier classes (train ids);
    ``anomaly`` is the chosen score (see :mod:`rpl_perception.scoring`), smoothed with σ
    ``smoothing_sigma``, always float32. With ``scores`` (several names) ``anomaly`` is
    (B, S, H, W), one map per score in that order, from the same network pass
    (:meth:`with_scores`). With ``return_logits`` the closed-set logits (B, C, H, W) come third.
    """

    def __init__(self, network: RPLNetwork, *, num_inlier: int, mean: Sequence[float],
                 std: Sequence[float], score: str = "rpl_energy", smoothing_sigma: float = 1.0,
                 return_logits: bool = False, scores: Optional[Sequence[str]] = None):
        super().__init__()
        names = (score,) if scores is None else tuple(scores)
        if not names:
            raise ValueError("scores must name at least one score")
        for name in names:
            if name not in SCORES:
                raise ValueError(f"unknown score {name!r}; choose one of {', '.join(SCORES)}")
            if name == "rpl_energy" and not network.has_branch:
                raise ValueError("score 'rpl_energy' needs RPL weights; this model has none "
                                 f"(closed-set baselines: {', '.join(BASELINE_SCORES)})")
        if smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma must be >= 0, got {smoothing_sigma}")
        self.network = network
        self.num_inlier = num_inlier
        self.score = names[0]
        #: the score of each anomaly channel where the model gives several, else None
        self.scores = None if scores is None else names
        self.smoothing_sigma = float(smoothing_sigma)
        self.return_logits = return_logits
        self.normalise = ImageNormalisation(mean, std)
        self.scoring = AnomalyScoring(num_inlier, names, smoothing_sigma, stacked=scores is not None)

    def with_scores(self, scores: Sequence[str]) -> "AnomalyModel":
        """The same network (shared, not copied) giving every score in ``scores`` from one pass."""
        model = AnomalyModel(self.network, num_inlier=self.num_inlier, mean=(0.0,) * 3, std=(1.0,) * 3,
                             smoothing_sigma=self.smoothing_sigma, scores=scores)
        model.normalise = self.normalise  # this model's normalisation, shared
        return model.train(self.training)

    def forward(self, images: torch.Tensor):
        out = self.network(self.normalise(images))
        labels, anomaly = self.scoring(out.closed, out.rpl)
        if self.return_logits:
            return labels, anomaly, out.closed
        return labels, anomaly
