"""The RPL training losses: the in-distribution / outlier terms (paper Eq. 4–6) and CoroCL (Eq. 7).

Both follow the official code (github.com/yyliu01/RPL, ``rpl_corocl.code/loss/PositiveEnergy.py``
and ``loss/CoroCL.py``) term by term; the docstrings say where this code differs in form, never
in value. Targets hold 254 = OoD (pasted object), 255 = void, any other value = inlier; void
pixels enter no term.
"""

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from rpl_perception.labels import OUTLIER as OOD_LABEL
from rpl_perception.labels import VOID as VOID_LABEL

__all__ = ["OOD_LABEL", "VOID_LABEL", "rpl_losses", "corocl_loss", "entropy"]


def _check_pair(logits: torch.Tensor, target: torch.Tensor, where: str) -> None:
    if logits.ndim != 4 or target.ndim != 3:
        raise ValueError(f"{where}: expected logits (N,C,H,W) and target (N,H,W); "
                         f"got {tuple(logits.shape)} and {tuple(target.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{where}: logits must be float32 or float64; got {logits.dtype}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; an empty mask gives 0 that still backpropagates."""
    if mask.any():
        return values[mask].mean()
    return values.sum() * 0.0


def entropy(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """H(z) = −Σ_c q_c log q_c / t with q = clamp(softmax(z), min=1e-7), per pixel (N,H,W).

    The clamp is the official ``disimilarity_entropy``'s; it keeps log finite.
    """
    q = torch.clamp(torch.softmax(logits, dim=1), min=1e-7)
    return -(q * torch.log(q)).sum(dim=1) / t


def rpl_losses(logits_rpl: torch.Tensor, logits_closed: torch.Tensor, target: torch.Tensor, *,
               ood_label: int = OOD_LABEL, void_label: int = VOID_LABEL, t: float = 1.0,
               energy_weight: float = 0.05) -> Dict[str, torch.Tensor]:
    """RPL losses on ŷ (``logits_rpl``, with the branch) and ỹ (``logits_closed``, frozen segmenter).

    As the official ``energy_loss`` (paper Eq. 4–6), with pseudo = argmax_c ỹ:

    * ``ce``     = mean over inlier pixels of CE(ŷ, pseudo) — ground-truth classes are never used;
    * ``reg``    = mean over inlier pixels of (H(ŷ) − H(ỹ))², H as :func:`entropy`;
    * ``energy`` = mean over OoD pixels of ReLU(logsumexp_c ŷ) (0 without OoD pixels). The
      official code computes log(Σ exp), which overflows for large logits; logsumexp is the same
      value computed stably;
    * ``total``  = ce + reg + energy_weight · energy.

    A term whose pixel set is empty is 0. Shapes: logits (N,C,H,W) float32/float64, target (N,H,W).
    """
    _check_pair(logits_rpl, target, "rpl_losses")
    if logits_closed.shape != logits_rpl.shape:
        raise ValueError(f"rpl_losses: logits_closed {tuple(logits_closed.shape)} and logits_rpl "
                         f"{tuple(logits_rpl.shape)} differ")
    if target.shape != logits_rpl.shape[:1] + logits_rpl.shape[2:]:
        raise ValueError(f"rpl_losses: target {tuple(target.shape)} does not match logits "
                         f"{tuple(logits_rpl.shape)}")
    ood = target == ood_label
    inlier = ~ood & (target != void_label)

    pseudo = logits_closed.max(dim=1).indices  # = argmax (first maximum), several times faster on a CPU
    ce = _masked_mean(F.cross_entropy(logits_rpl, pseudo, reduction="none"), inlier)
    reg = _masked_mean((entropy(logits_rpl, t) - entropy(logits_closed, t)) ** 2, inlier)
    energy = _masked_mean(F.relu(torch.logsumexp(logits_rpl, dim=1)), ood)
    return {"ce": ce, "reg": reg, "energy": energy, "total": ce + reg + energy_weight * energy}


def _subsample(pool: torch.Tensor, k: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """k random rows of ``pool`` (a random permutation's first k)."""
    # indices drawn on the CPU so that one seeded generator gives the same choice on any device
    order = torch.randperm(pool.shape[0], generator=generator)[:k]
    return pool[order.to(pool.device)]


def _pixels(embedding: torch.Tensor) -> torch.Tensor:
    return embedding.flatten(start_dim=2).transpose(1, 2).reshape(-1, embedding.shape[1])


def _labels_at(target: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(target.unsqueeze(1).float(), size=size, mode="nearest")[:, 0].long().flatten()


def corocl_loss(city_proj: torch.Tensor, city_target: torch.Tensor, context_proj: torch.Tensor,
                context_target: torch.Tensor, *, tau: float = 0.1, max_views: int = 512,
                ood_label: int = OOD_LABEL, void_label: int = VOID_LABEL,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Context-robust contrastive loss (paper Eq. 7) as the official ``ContrastLoss``.

    ``city_*``: projected embeddings (N,C,h,w) and targets (N,H,W) of the inlier images with
    pasted objects; ``context_*``: the same for their context (whole outlier) images. Steps:

    1. targets are brought to (h, w) with nearest interpolation; embeddings L2-normalised over C;
    2. pools over the whole batch: city OoD, city inlier (neither OoD nor void), context OoD,
       context background (label 0); k = min(max_views, size of every pool); each pool is
       randomly subsampled to k (in that order, ``torch.randperm`` on the CPU with ``generator``);
    3. anchors = [city OoD; city inlier] labelled [1; 0]; contrast set = [city OoD; city inlier;
       context OoD; context background] labelled [1; 0; 1; 0] (anchors appear in it);
    4. S = anchors · contrastᵀ / τ minus its row max; positives = same label except the anchor's
       own copy; for each positive, log p = S − log(exp(S) + Σ_negatives exp(S));
    5. loss = −mean over anchors of the mean log p over the anchor's positives; 0 when k = 0.
    """
    for proj, target, what in ((city_proj, city_target, "city"), (context_proj, context_target, "context")):
        _check_pair(proj, target, f"corocl_loss ({what})")
    if city_proj.shape[1] != context_proj.shape[1]:
        raise ValueError(f"corocl_loss: city and context embeddings have {city_proj.shape[1]} and "
                         f"{context_proj.shape[1]} channels")
    city_labels = _labels_at(city_target, city_proj.shape[-2:])
    context_labels = _labels_at(context_target, context_proj.shape[-2:])
    city, context = _pixels(city_proj), _pixels(context_proj)

    pools = [(city, city_labels == ood_label),
             (city, (city_labels != ood_label) & (city_labels != void_label)),
             (context, context_labels == ood_label),
             (context, context_labels == 0)]
    pools = [(pixels, mask.nonzero()[:, 0]) for pixels, mask in pools]
    k = min([max_views] + [len(index) for _, index in pools])
    if k == 0:
        return (city_proj.sum() + context_proj.sum()) * 0.0
    # L2-normalised after the subsampling: the same vectors, without normalising every pixel
    city_ood, city_in, context_ood, context_bg = (F.normalize(pixels[_subsample(index, k, generator)], p=2, dim=1)
                                                  for pixels, index in pools)

    anchors = torch.cat([city_ood, city_in])
    contrast = torch.cat([city_ood, city_in, context_ood, context_bg])
    ones, zeros = torch.ones(k, device=city.device), torch.zeros(k, device=city.device)
    anchor_labels = torch.cat([ones, zeros])
    contrast_labels = torch.cat([ones, zeros, ones, zeros])

    scores = anchors @ contrast.T / tau
    scores = scores - scores.max(dim=1, keepdim=True).values.detach()
    same = anchor_labels[:, None] == contrast_labels[None, :]
    negatives = (~same).to(scores.dtype)
    positives = same.to(scores.dtype)
    positives.fill_diagonal_(0.0)  # an anchor's own copy sits at the same index in the contrast set

    exp_scores = torch.exp(scores)
    negative_sum = (exp_scores * negatives).sum(dim=1, keepdim=True)
    log_prob = scores - torch.log(exp_scores + negative_sum)
    mean_log_prob_pos = (positives * log_prob).sum(dim=1) / positives.sum(dim=1)
    return -mean_log_prob_pos.mean()
