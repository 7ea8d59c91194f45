"""Pixel-wise anomaly scores from logits; higher always means more anomalous.

- ``rpl_energy``: the RPL score (paper Sec. 3.3, "Inference"): E = −logsumexp over the inlier
  logits of ŷ (the branch's output), then Gaussian smoothing.
- Closed-set baselines on ỹ: ``energy`` (−logsumexp, Liu et al. 2020), ``max_logit`` (−max logit,
  Hendrycks et al. 2022), ``max_softmax`` (1 − max softmax, Hendrycks & Gimpel 2017) and
  ``entropy`` (softmax entropy, natural log).

Only the inlier channels (the first ``num_inlier``) enter a score: ESPNetv2's extra "background"
channel is not a class the benchmarks know.
"""

import math

import torch
import torch.nn.functional as F

__all__ = ["SCORES", "BASELINE_SCORES", "closed_set_score", "generic_display_range", "gaussian_kernel1d",
           "gaussian_smooth"]

BASELINE_SCORES = ("energy", "max_logit", "max_softmax", "entropy")
#: every selectable score; ``rpl_energy`` needs an RPL branch
SCORES = ("rpl_energy",) + BASELINE_SCORES


def generic_display_range(score: str, num_classes: int):
    """The (low, high) score range heatmap colours span for a model whose file records none.

    The probability scores have natural bounds (the entropy's maximum is log of the class count);
    the logit scores' span is typical of Cityscapes segmenters but not guaranteed.
    """
    if score == "max_softmax":
        return (0.0, 1.0)
    if score == "entropy":
        return (0.0, math.log(num_classes))
    if score in ("energy", "rpl_energy", "max_logit"):
        return (-20.0, 0.0)
    raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")


def closed_set_score(logits: torch.Tensor, name: str) -> torch.Tensor:
    """Score of (B, C, H, W) inlier logits → (B, H, W). ``rpl_energy`` is ``energy`` applied to ŷ."""
    if name in ("energy", "rpl_energy"):
        return -torch.logsumexp(logits, dim=1)
    if name == "max_logit":
        return -logits.amax(dim=1)
    if name == "max_softmax":
        return 1.0 - torch.softmax(logits, dim=1).amax(dim=1)
    if name == "entropy":
        log_p = torch.log_softmax(logits, dim=1)
        return -(log_p.exp() * log_p).sum(dim=1)
    raise ValueError(f"unknown score {name!r}; choose one of {', '.join(SCORES)}")


def gaussian_kernel1d(sigma: float, size: int = 0) -> torch.Tensor:
    """Normalised 1-D Gaussian, as torchvision's GaussianBlur builds it.

    ``size`` 0 means 2·⌈3σ⌉ + 1, which gives the official 7-tap kernel for σ = 1.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if size <= 0:
        size = 2 * math.ceil(3 * sigma) + 1
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return (pdf / pdf.sum()).to(torch.float32)


def gaussian_smooth(score: torch.Tensor, sigma: float, dilation: int = 1) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) scores with reflect padding (official: 7×7, σ = 1).

    σ = 0 returns the input unchanged. ``dilation`` > 1 spaces the taps that many pixels apart
    (SML's dilated smoothing, measured by scripts/score_postprocessing.py).
    """
    if sigma == 0:
        return score
    k = gaussian_kernel1d(sigma).to(device=score.device, dtype=score.dtype)
    r = (k.numel() // 2) * dilation
    x = score.unsqueeze(1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1), dilation=(1, dilation))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1), dilation=(dilation, 1))
    return x.squeeze(1)
