"""The RPL training losses: the in-distribution / outlier terms (paper Eq. 4–6) and CoroCL (Eq. 7).

Both follow the official code (github.com/yyliu01/RPL, ``rpl_corocl.code/loss/PositiveEnergy.py``
and ``loss/CoroCL.py``) term by term; the docstrings say where this code differs in form, never
in value. Targets hold 254 = OoD (pasted object), 255 = void, any other value = inlier; void
pixels enter no term.
"""

import functools
import math
from typing import Dict, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from rpl_perception.labels import OUTLIER as OOD_LABEL
from rpl_perception.labels import VOID as VOID_LABEL

__all__ = ["OOD_LABEL", "VOID_LABEL", "ClosedSetTargets", "closed_set_targets", "rpl_losses", "corocl_loss",
           "entropy"]


def _check_pair(logits: torch.Tensor, target: torch.Tensor, where: str) -> None:
    if logits.ndim != 4 or target.ndim != 3:
        raise ValueError(f"{where}: expected logits (N,C,H,W) and target (N,H,W); "
                         f"got {tuple(logits.shape)} and {tuple(target.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{where}: logits must be float32 or float64; got {logits.dtype}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; an empty mask gives 0 that still backpropagates.

    Written without a data-dependent branch or boolean indexing, so that ``torch.compile`` fuses it.
    """
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


#: log of the probability floor of the official ``disimilarity_entropy`` (q clamped to ≥ 1e-7)
_LOG_FLOOR = math.log(1e-7)


class ClosedSetTargets(NamedTuple):
    """What the losses read from the frozen closed-set network's logits ỹ, per pixel (N,H,W)."""

    pseudo: torch.Tensor  # argmax_c ỹ (the first maximum), integer
    entropy: torch.Tensor  # H(ỹ) at temperature 1, float


def _entropy_last(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """−Σ_c q_c log q_c over the last dim, q = clamp(softmax(z), min=1e-7), given lse = logsumexp(z).

    log q = z − lse, and log(clamp(q, 1e-7)) = clamp(log q, log 1e-7) (log is monotonic; the
    gradient is cut at the same pixels), so no softmax is taken a second time.
    """
    log_q = z - lse.unsqueeze(-1)
    return -(log_q.exp().clamp(min=1e-7) * log_q.clamp(min=_LOG_FLOOR)).sum(dim=-1)


def _channels_last(logits: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) → (N,H,W,C) view: a reduction over C then reads contiguous memory when the
    tensor is stored channels-last (a copy otherwise, which is still faster than strided reductions)."""
    return logits.permute(0, 2, 3, 1).contiguous()


def entropy(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """H(z) = −Σ_c q_c log q_c / t with q = clamp(softmax(z), min=1e-7), per pixel (N,H,W).

    The clamp is the official ``disimilarity_entropy``'s; it keeps log finite.
    """
    z = _channels_last(logits)
    return _entropy_last(z, torch.logsumexp(z, dim=-1)) / t


def closed_set_targets(logits_closed: torch.Tensor) -> ClosedSetTargets:
    """Pseudo-labels and entropy of the frozen logits ỹ (N,C,H,W), without autograd."""
    with torch.no_grad():
        z = _channels_last(logits_closed)
        pseudo = z.max(dim=-1).indices  # = argmax (the first maximum)
        return ClosedSetTargets(pseudo, _entropy_last(z, torch.logsumexp(z, dim=-1)))


def rpl_losses(logits_rpl: torch.Tensor, closed: Union[torch.Tensor, ClosedSetTargets], target: torch.Tensor, *,
               ood_label: int = OOD_LABEL, void_label: int = VOID_LABEL, t: float = 1.0,
               energy_weight: float = 0.05, compiled: bool = False) -> Dict[str, torch.Tensor]:
    """RPL losses on ŷ (``logits_rpl``, with the branch) and ỹ (the frozen closed-set network's logits,
    or their :func:`closed_set_targets`, which the training computes with the frozen pass).

    As the official ``energy_loss`` (paper Eq. 4–6), with pseudo = argmax_c ỹ:

    * ``ce``     = mean over inlier pixels of CE(ŷ, pseudo) — ground-truth classes are never used;
    * ``reg``    = mean over inlier pixels of (H(ŷ) − H(ỹ))², H as :func:`entropy`;
    * ``energy`` = mean over OoD pixels of ReLU(logsumexp_c ŷ) (0 without OoD pixels). The
      official code computes log(Σ exp), which overflows for large logits; logsumexp is the same
      value computed stably;
    * ``total``  = ce + reg + energy_weight · energy.

    A term whose pixel set is empty is 0. Shapes: logits (N,C,H,W) float32/float64, target (N,H,W).
    One log-softmax serves all three terms (CE = −log q at the pseudo-label, H from log q); the
    reductions run over the channels stored last. The values are the definitions' up to float rounding.
    ``compiled``: the terms run as one ``torch.compile``-d function (fused kernels, same values;
    compiled once per process and shape).
    """
    _check_pair(logits_rpl, target, "rpl_losses")
    if isinstance(closed, torch.Tensor):
        if closed.shape != logits_rpl.shape:
            raise ValueError(f"rpl_losses: logits_closed {tuple(closed.shape)} and logits_rpl "
                             f"{tuple(logits_rpl.shape)} differ")
        closed = closed_set_targets(closed)
    if target.shape != logits_rpl.shape[:1] + logits_rpl.shape[2:]:
        raise ValueError(f"rpl_losses: target {tuple(target.shape)} does not match logits "
                         f"{tuple(logits_rpl.shape)}")
    if closed.pseudo.shape != target.shape:
        raise ValueError(f"rpl_losses: closed-set targets {tuple(closed.pseudo.shape)} do not match "
                         f"the target {tuple(target.shape)}")
    terms = _compiled_rpl_terms() if compiled else _rpl_terms
    return terms(_channels_last(logits_rpl), closed.pseudo.long(), closed.entropy.to(logits_rpl.dtype),
                 target, ood_label, void_label, float(t), float(energy_weight))


@functools.lru_cache(maxsize=1)
def _compiled_rpl_terms():
    return torch.compile(_rpl_terms, dynamic=False)


def _rpl_terms(z: torch.Tensor, pseudo: torch.Tensor, closed_entropy: torch.Tensor, target: torch.Tensor,
               ood_label: int, void_label: int, t: float, energy_weight: float) -> Dict[str, torch.Tensor]:
    """:func:`rpl_losses` on (N,H,W,C) logits; a pure tensor function (``torch.compile`` fuses it)."""
    ood = target == ood_label
    inlier = ~ood & (target != void_label)
    lse = torch.logsumexp(z, dim=-1)
    ce = lse - z.gather(-1, pseudo.unsqueeze(-1)).squeeze(-1)  # −log softmax at the pseudo-label
    reg = (_entropy_last(z, lse) / t - closed_entropy / t) ** 2
    ce, reg = _masked_mean(ce, inlier), _masked_mean(reg, inlier)
    energy = _masked_mean(F.relu(lse), ood)
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
