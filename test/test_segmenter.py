"""AnomalySegmenter: the ROS-free inference core."""

import cv2
import numpy as np
import pytest
import torch

from rpl_perception import AnomalySegmenter
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model
from rpl_perception.image import MAX_IMAGE_SIDE
from rpl_perception.models import get_architecture
from rpl_perception.models.rpl import RPLNetwork

SMALL = (256, 128)


@pytest.fixture(scope="module")
def small_segmenter():
    return AnomalySegmenter.from_pretrained(network_size=SMALL)


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_predict_returns_camera_resolution_outputs(small_segmenter):
    rgb = np.random.default_rng(0).integers(0, 256, (97, 203, 3), dtype=np.uint8)
    pred = small_segmenter.predict(rgb)
    assert pred.labels.shape == (97, 203) and pred.labels.dtype == np.uint8
    assert pred.anomaly.shape == (97, 203) and pred.anomaly.dtype == np.float32
    assert pred.labels.max() <= 18
    assert pred.score == "rpl_energy"  # the embedded model carries a trained RPL branch


def test_gray_and_rgba_inputs_match_their_rgb_equivalent(small_segmenter):
    gray = np.random.default_rng(1).integers(0, 256, (64, 80), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((64, 80, 1), 7, np.uint8)], axis=2)
    ref = small_segmenter.predict(rgb)
    for variant in (gray, gray[:, :, None], rgba):
        pred = small_segmenter.predict(variant)
        assert np.array_equal(pred.labels, ref.labels)
        assert np.array_equal(pred.anomaly, ref.anomaly)


def test_batch_equals_single_frames_of_different_sizes(small_segmenter):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(120, 250, 3), (64, 64, 3)]]
    batch = small_segmenter.predict_batch(frames)
    for frame, pred in zip(frames, batch):
        single = small_segmenter.predict(frame)
        assert pred.labels.shape == frame.shape[:2]
        assert np.array_equal(pred.labels, single.labels)
        np.testing.assert_allclose(pred.anomaly, single.anomaly, atol=1e-5)
    assert small_segmenter.predict_batch([]) == []


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 10, 3), np.float32), "dtype float32"),
    (np.zeros((10, 10, 2), np.uint8), r"shape \(10, 10, 2\)"),
    (np.zeros((0, 10, 3), np.uint8), "empty image"),
    (np.zeros((2, 2, 2, 3), np.uint8), r"shape \(2, 2, 2, 3\)"),
    ([[1, 2], [3, 4]], "got list"),
])
def test_bad_input_is_a_value_error_saying_what_was_received(small_segmenter, bad, message):
    with pytest.raises(ValueError, match=message) as info:
        small_segmenter.predict(bad)
    assert "uint8" in str(info.value) or "empty" in str(info.value)


def test_absurdly_large_image_is_rejected_without_allocating_it(small_segmenter):
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (MAX_IMAGE_SIDE + 1, 4, 3), (0, 0, 0))
    with pytest.raises(ValueError, match="largest accepted side"):
        small_segmenter.predict(huge)


def test_network_size_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        AnomalySegmenter.from_pretrained(network_size=(1000, 512))


def test_rpl_score_without_branch_is_refused_with_the_alternatives():
    network, meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)
    with pytest.raises(ValueError, match="needs RPL weights.*energy"):
        AnomalySegmenter(network, meta, score="rpl_energy", network_size=SMALL)


def test_closed_set_labels_identical_with_and_without_branch(roadanomaly_dev):
    torch.manual_seed(0)
    network, meta = load_model(DEFAULT_CHECKPOINT)
    arch = get_architecture(meta.architecture)
    with_branch = RPLNetwork(network.closed_set, arch.build_rpl_branch(network.closed_set, 64, "pyramid"))
    plain = AnomalySegmenter(network, meta, network_size=SMALL)
    rpl = AnomalySegmenter(with_branch, meta, score="rpl_energy", network_size=SMALL)
    rgb = _read_rgb(next((roadanomaly_dev / "images").glob("*.jpg")))
    a, b = plain.predict(rgb), rpl.predict(rgb)
    assert np.array_equal(a.labels, b.labels)
    assert b.score == "rpl_energy"
    assert not np.allclose(a.anomaly, b.anomaly)  # the score does come from ŷ


def test_real_road_scene_is_segmented_plausibly(roadanomaly_dev):
    segmenter = AnomalySegmenter.from_pretrained()  # full 1024×512, as the model was trained
    name = "animals22_red_fox_on_road"
    rgb = _read_rgb(roadanomaly_dev / "images" / f"{name}.jpg")
    label = cv2.imread(str(roadanomaly_dev / "labels" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    pred = segmenter.predict(rgb)
    h, w = pred.labels.shape
    lower_centre = pred.labels[int(0.8 * h):, int(0.35 * w):int(0.65 * w)]
    assert (lower_centre == 0).mean() > 0.9  # road (train id 0) dominates in front of the car
    sky_rows = pred.labels[: h // 10]
    assert np.isin(sky_rows, [2, 8, 10]).mean() > 0.8  # building / vegetation / sky at the top
    # the anomaly score (RPL energy) puts the fox above the road it stands on
    fox, road = pred.anomaly[label == 2], pred.anomaly[(label == 0) & (pred.labels == 0)]
    assert np.median(fox) > np.median(road)


def test_display_range_and_threshold_come_from_the_checkpoint(small_segmenter):
    low, high = small_segmenter.display_range
    assert low < small_segmenter.anomaly_threshold < high
    assert AnomalySegmenter.from_pretrained(score="max_softmax", network_size=SMALL).display_range[0] >= 0.0


def test_uncalibrated_model_falls_back_to_a_fixed_range_with_a_warning(caplog):
    network, meta = load_model(DEFAULT_CHECKPOINT)
    meta.display_range, meta.anomaly_threshold = {}, {}  # as a converted third-party file
    segmenter = AnomalySegmenter(network, meta, network_size=SMALL)
    with caplog.at_level("WARNING"):
        assert segmenter.display_range == (-20.0, 0.0)
        assert segmenter.anomaly_threshold == -10.0
    assert "records no display range for score 'rpl_energy'" in caplog.text
