"""scripts/score_postprocessing.py: SML's boundary suppression and dilated smoothing do what their
definitions say, and the script scores the shipped smoothing exactly as the segmenter's own maps."""

import numpy as np
import pytest
import torch

from rpl_perception.eval.datasets import ROAD_ANOMALY_LABELS, Sample, read_label
from rpl_perception.eval.metrics import PixelMetricAccumulator
from rpl_perception.image import read_rgb
from rpl_perception.resources import SAMPLES_ROOT
from rpl_perception.scoring import gaussian_kernel1d
from rpl_perception.segmenter import AnomalySegmenter
from script_loader import load_script

post = load_script("score_postprocessing")


def two_classes(width=40, height=12, split=20):
    labels = torch.zeros(1, height, width, dtype=torch.int64)
    labels[..., split:] = 1
    return labels


def test_boundaries_are_the_pixels_next_to_another_class():
    boundaries = post.label_boundaries(two_classes())[0, 0]
    assert boundaries[:, 19:21].all() and boundaries.sum() == 2 * 12


def test_widen_grows_a_pixel_into_a_square():
    mask = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    mask[0, 0, 4, 4] = True
    grown = post.widen(mask, 2)[0, 0]
    assert grown[2:7, 2:7].all() and grown.sum() == 25


def test_boundary_suppression_fills_the_band_from_each_side_and_leaves_the_rest():
    labels = two_classes()
    score = torch.zeros(1, 12, 40)
    score[..., 20:] = 10.0  # each class's own level
    score[..., 16:24] += 100.0  # a false ridge along the boundary, wider than the band's inner part
    out = post.suppress_boundaries(score, labels)[0]
    width = post.BOUNDARY_WIDTH
    # beyond the widest band (width − 1 = 3 px from the boundary pixels) nothing changes
    assert torch.equal(out[:, : 19 - width + 1], score[0, :, : 19 - width + 1])
    assert torch.equal(out[:, 20 + width:], score[0, :, 20 + width:])
    # the boundary pixels themselves end up at a mean of their neighbours, well below the ridge
    assert (out[:, 19:21] < score[0, :, 19:21]).all()
    assert np.isfinite(out.numpy()).all()


def test_dilated_smoothing_spreads_an_impulse_to_taps_a_dilation_apart_and_keeps_a_constant():
    impulse = torch.zeros(1, 64, 64)
    impulse[0, 32, 32] = 1.0
    out = post.dilated_smooth(impulse)[0]
    step = post.DILATION
    kernel = gaussian_kernel1d(1.0)
    assert out[32, 32 + step].item() == pytest.approx((kernel[3] * kernel[4]).item(), rel=1e-6)
    assert out[32, 33].item() == 0.0 and out[33, 32].item() == 0.0  # between the taps: nothing
    assert out.sum().item() == pytest.approx(1.0, rel=1e-6)
    constant = torch.full((1, 50, 70), -7.0)
    torch.testing.assert_close(post.dilated_smooth(constant), constant)


def test_the_shipped_smoothing_is_scored_as_the_segmenter_predicts_it():
    names = ["animals03_Zebras_in_the_road", "vehicle02_Broadmoor_Cones_Skidloader"]
    samples = [Sample(n, read_rgb(SAMPLES_ROOT / "images" / f"{n}.jpg"),
                      read_label(SAMPLES_ROOT / "labels" / f"{n}.png", ROAD_ANOMALY_LABELS)) for n in names]
    raw = AnomalySegmenter.from_pretrained(score="rpl_energy", smoothing_sigma=0.0, network_size=(256, 128))
    results = post.measure_set(raw, samples, ["none", "gauss_s1 (shipped)"], desc="samples")
    for sigma, variant in ((0.0, "none"), (1.0, "gauss_s1 (shipped)")):
        segmenter = AnomalySegmenter.from_pretrained(score="rpl_energy", smoothing_sigma=sigma,
                                                     network_size=(256, 128))
        accumulator = PixelMetricAccumulator()
        for sample in samples:
            accumulator.update(segmenter.predict(sample.image).anomaly, sample.label)
        expected = accumulator.compute()
        assert 0.0 < expected["ap"] < 1.0
        for metric in ("ap", "fpr95", "auroc"):
            assert results[variant][metric] == pytest.approx(expected[metric], abs=1e-9)
    assert results["none"]["ap"] != results["gauss_s1 (shipped)"]["ap"]
