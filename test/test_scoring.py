"""Anomaly scores (paper Sec. 3.3 and the closed-set baselines) and the Gaussian smoothing."""

import math

import pytest
import torch

from rpl_perception.scoring import closed_set_score, gaussian_kernel1d, gaussian_smooth


def test_energy_is_negative_logsumexp_and_higher_for_flat_logits():
    confident = torch.tensor([10.0, 0.0, 0.0]).view(1, 3, 1, 1)
    flat = torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1, 1)
    e_conf = closed_set_score(confident, "energy").item()
    e_flat = closed_set_score(flat, "energy").item()
    assert e_conf == pytest.approx(-math.log(math.exp(10) + 2), abs=1e-5)
    assert e_flat == pytest.approx(-(1 + math.log(3)), abs=1e-6)
    assert e_flat > e_conf  # higher = more anomalous


def test_baselines_on_hand_computed_logits():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).view(1, 3, 1, 1)
    assert closed_set_score(logits, "max_softmax").item() == pytest.approx(0.5, abs=1e-6)
    assert closed_set_score(logits, "max_logit").item() == pytest.approx(math.log(2), abs=1e-6)
    expected_entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert closed_set_score(logits, "entropy").item() == pytest.approx(expected_entropy, abs=1e-6)
    uniform = torch.zeros(1, 19, 2, 2)
    assert torch.allclose(closed_set_score(uniform, "entropy"), torch.full((1, 2, 2), math.log(19)))


def test_unknown_score_is_rejected():
    with pytest.raises(ValueError, match="rpl_energy"):
        closed_set_score(torch.zeros(1, 3, 1, 1), "odin")


def test_official_kernel_is_seven_taps_for_sigma_one():
    k = gaussian_kernel1d(1.0)
    pdf = torch.exp(-0.5 * torch.arange(-3, 4, dtype=torch.float64) ** 2)
    assert k.numel() == 7
    assert torch.allclose(k.double(), pdf / pdf.sum(), atol=1e-7)


def test_smoothing_impulse_gives_the_separable_kernel_and_preserves_constants():
    score = torch.zeros(1, 15, 15)
    score[0, 7, 7] = 1.0
    out = gaussian_smooth(score, 1.0)
    k = gaussian_kernel1d(1.0)
    assert torch.allclose(out[0, 4:11, 4:11], torch.outer(k, k), atol=1e-7)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)
    const = torch.full((2, 9, 11), -3.5)
    assert torch.allclose(gaussian_smooth(const, 1.0), const, atol=1e-6)


def test_smoothing_uses_reflect_padding_at_the_border():
    score = torch.zeros(1, 9, 9)
    score[0, 1, 4] = 1.0  # impulse on the second row
    out = gaussian_smooth(score, 1.0)
    k = gaussian_kernel1d(1.0)
    # reflect padding mirrors row 1 to row -1, so row 0 receives the impulse twice
    # (zero or replicate padding would give k[2]·k[3] once)
    assert out[0, 0, 4].item() == pytest.approx((2 * k[2] * k[3]).item(), abs=1e-7)


def test_sigma_zero_turns_smoothing_off():
    score = torch.randn(1, 8, 8)
    assert torch.equal(gaussian_smooth(score, 0.0), score)
