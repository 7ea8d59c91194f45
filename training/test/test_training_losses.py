"""The RPL losses and CoroCL against hand-computed values and a naive reference of their definitions."""

import itertools
import math

import numpy as np
import pytest
import torch

from rpl_training.losses import corocl_loss, entropy, rpl_losses


def _entropy(logits, t=1.0):
    exps = [math.exp(v) for v in logits]
    q = [max(e / sum(exps), 1e-7) for e in exps]
    return -sum(p * math.log(p) for p in q) / t


def _logits(*pixels):
    """(1, C, 1, P) float64 from P per-pixel logit lists."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, len(pixels[0]), 1, len(pixels))


def test_rpl_losses_hand_computed():
    closed = _logits([2.0, 0.0], [0.0, 1.0], [0.0, 0.0])
    rpl = _logits([1.0, 1.0], [3.0, 1.0], [5.0, -5.0])
    target = torch.tensor([[[7, 254, 255]]])  # inlier (any class id), OoD, void
    out = rpl_losses(rpl, closed, target)

    ce = math.log(2.0)  # pseudo-label = argmax [2, 0] = 0; CE of uniform logits
    reg = (math.log(2.0) - _entropy([2.0, 0.0])) ** 2
    energy = 3.0 + math.log(1.0 + math.exp(-2.0))  # logsumexp [3, 1]
    assert out["ce"].item() == pytest.approx(ce, abs=1e-12)
    assert out["reg"].item() == pytest.approx(reg, abs=1e-12)
    assert out["energy"].item() == pytest.approx(energy, abs=1e-12)
    assert out["total"].item() == pytest.approx(ce + reg + 0.05 * energy, abs=1e-12)

    # the void pixel enters no term; the pseudo-label comes from ỹ, never from the target's class
    rpl_changed = _logits([1.0, 1.0], [3.0, 1.0], [-40.0, 40.0])
    again = rpl_losses(rpl_changed, closed, torch.tensor([[[3, 254, 255]]]))
    for key in out:
        assert again[key].item() == pytest.approx(out[key].item(), abs=1e-12)


def test_rpl_losses_temperature_relu_and_missing_ood():
    closed = _logits([2.0, 0.0], [0.0, 3.0])
    rpl = _logits([0.5, 1.5], [-5.0, -6.0])
    out = rpl_losses(rpl, closed, torch.tensor([[[0, 254]]]), t=2.0, energy_weight=0.5)
    assert out["reg"].item() == pytest.approx((_entropy([0.5, 1.5], 2.0) - _entropy([2.0, 0.0], 2.0)) ** 2)
    assert out["energy"].item() == 0.0  # logsumexp [-5, -6] < 0, ReLU → 0
    no_ood = rpl_losses(rpl, closed, torch.tensor([[[0, 1]]]))
    assert no_ood["energy"].item() == 0.0
    assert no_ood["total"].item() == pytest.approx(no_ood["ce"].item() + no_ood["reg"].item())


def test_rpl_losses_are_stable_and_backpropagate_without_inliers():
    rpl = _logits([1000.0, 0.0], [0.0, 1.0]).requires_grad_()
    closed = _logits([0.0, 1.0], [0.0, 1.0])
    out = rpl_losses(rpl, closed, torch.tensor([[[254, 255]]]))
    assert out["energy"].item() == pytest.approx(1000.0)  # log(Σ exp) would overflow to inf
    assert out["ce"].item() == 0.0 and out["reg"].item() == 0.0  # no inlier pixel
    out["total"].backward()
    assert torch.isfinite(rpl.grad).all() and rpl.grad[0, 0, 0, 0].item() == pytest.approx(0.05)


def test_rpl_losses_float32_matches_float64_and_rejects_bad_shapes():
    g = torch.Generator().manual_seed(0)
    rpl, closed = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64), torch.randn(2, 5, 4, 6, generator=g,
                                                                                          dtype=torch.float64)
    target = torch.randint(0, 5, (2, 4, 6), generator=g)
    target[0, :2] = 254
    target[1, 3] = 255
    double, single = rpl_losses(rpl, closed, target), rpl_losses(rpl.float(), closed.float(), target)
    for key in double:
        assert single[key].dtype == torch.float32
        assert single[key].item() == pytest.approx(double[key].item(), rel=1e-5)
    assert torch.allclose(entropy(rpl), -(torch.softmax(rpl, 1) * torch.log_softmax(rpl, 1)).sum(1))
    with pytest.raises(ValueError, match=r"target \(N,H,W\)"):
        rpl_losses(rpl, closed, target[0])


def _normalised(vectors):
    return [v / np.linalg.norm(v) for v in vectors]


def _reference_corocl(anchors, anchor_labels, contrast, contrast_labels, tau):
    """The definition, one anchor and one positive at a time."""
    per_anchor = []
    for i, (a, la) in enumerate(zip(anchors, anchor_labels)):
        s = [float(a @ c) / tau for c in contrast]
        top = max(s)
        s = [v - top for v in s]
        negatives = sum(math.exp(v) for v, lc in zip(s, contrast_labels) if lc != la)
        log_p = [v - math.log(math.exp(v) + negatives)
                 for j, (v, lc) in enumerate(zip(s, contrast_labels)) if lc == la and j != i]
        per_anchor.append(sum(log_p) / len(log_p))
    return -sum(per_anchor) / len(per_anchor)


def _corocl_case(seed=0, channels=3):
    """Two city images (1×3 each) and one context image (1×5) with known pools."""
    rng = np.random.default_rng(seed)
    city = rng.normal(size=(2, channels, 1, 3))
    context = rng.normal(size=(1, channels, 1, 5))
    city_target = np.array([[[254, 0, 255]], [[11, 254, 3]]])  # OoD: (0,0), (1,1); inlier: (0,1), (1,0), (1,2)
    context_target = np.array([[[254, 0, 255, 0, 254]]])  # OoD: 0, 4; background: 1, 3
    pools = {"city_ood": [city[0, :, 0, 0], city[1, :, 0, 1]],
             "city_in": [city[0, :, 0, 1], city[1, :, 0, 0], city[1, :, 0, 2]],
             "context_ood": [context[0, :, 0, 0], context[0, :, 0, 4]],
             "context_bg": [context[0, :, 0, 1], context[0, :, 0, 3]]}
    return city, city_target, context, context_target, {k: _normalised(v) for k, v in pools.items()}


def _all_subset_losses(pools, k, tau):
    values = []
    for co, ci, xo, xb in itertools.product(*(itertools.combinations(pools[n], k)
                                              for n in ("city_ood", "city_in", "context_ood", "context_bg"))):
        anchors = list(co) + list(ci)
        values.append(_reference_corocl(anchors, [1] * k + [0] * k, anchors + list(xo) + list(xb),
                                        [1] * k + [0] * k + [1] * k + [0] * k, tau))
    return values


@pytest.mark.parametrize("max_views", [512, 1])
def test_corocl_matches_the_definition(max_views):
    city, city_target, context, context_target, pools = _corocl_case()
    tau = 0.1
    loss = corocl_loss(torch.from_numpy(city), torch.from_numpy(city_target), torch.from_numpy(context),
                       torch.from_numpy(context_target), tau=tau, max_views=max_views,
                       generator=torch.Generator().manual_seed(3))
    k = min(max_views, 2)  # smallest pool: 2 pixels
    candidates = _all_subset_losses(pools, k, tau)
    # whichever k pixels were drawn, the loss is the definition's value on them
    assert min(abs(loss.item() - c) for c in candidates) < 1e-10
    if max_views == 512:  # every pool except city inlier is used whole
        assert len(set(round(c, 12) for c in candidates)) == 3


def test_corocl_targets_are_resized_nearest_and_float32_works():
    city, city_target, context, context_target, _ = _corocl_case(seed=1)
    # targets at twice the embedding resolution; nearest keeps rows 0, 2, ... and columns 0, 2, ...
    big_city = np.full((2, 2, 6), 77)
    big_city[:, 0, ::2] = city_target[:, 0]
    big_context = np.full((1, 2, 10), 254)
    big_context[:, 0, ::2] = context_target[:, 0]
    args = dict(tau=0.1, max_views=2)
    direct = corocl_loss(torch.from_numpy(city), torch.from_numpy(city_target), torch.from_numpy(context),
                         torch.from_numpy(context_target), generator=torch.Generator().manual_seed(0), **args)
    resized = corocl_loss(torch.from_numpy(city), torch.from_numpy(big_city), torch.from_numpy(context),
                          torch.from_numpy(big_context), generator=torch.Generator().manual_seed(0), **args)
    single = corocl_loss(torch.from_numpy(city).float(), torch.from_numpy(city_target),
                         torch.from_numpy(context).float(), torch.from_numpy(context_target),
                         generator=torch.Generator().manual_seed(0), **args)
    assert resized.item() == pytest.approx(direct.item(), abs=1e-12)
    assert single.dtype == torch.float32 and single.item() == pytest.approx(direct.item(), rel=1e-5)


def test_corocl_is_zero_without_a_pool_and_still_backpropagates():
    city, city_target, context, _, _ = _corocl_case()
    city_t = torch.from_numpy(city).requires_grad_()
    no_context_ood = torch.zeros(1, 1, 5, dtype=torch.long)
    loss = corocl_loss(city_t, torch.from_numpy(city_target), torch.from_numpy(context), no_context_ood)
    assert loss.item() == 0.0
    loss.backward()
    assert city_t.grad is not None and not city_t.grad.any()
