"""Colour helpers and the ``rpl-perception predict`` command."""

import cv2
import numpy as np
import pytest

from rpl_perception.cli import main
from rpl_perception.visualize import CITYSCAPES_PALETTE, colorize_labels, colorize_scores, overlay


def test_palette_colours_and_void_is_black():
    labels = np.array([[0, 13, 255]], np.uint8)
    out = colorize_labels(labels)
    assert out.tolist() == [[[128, 64, 128], [0, 0, 142], [0, 0, 0]]]
    assert CITYSCAPES_PALETTE.shape == (19, 3)


def test_heatmap_colours_are_fixed_by_the_range_not_the_frame():
    a = colorize_scores(np.array([[0.0, 5.0]], np.float32), 0.0, 10.0)
    b = colorize_scores(np.array([[5.0, 100.0]], np.float32), 0.0, 10.0)
    assert np.array_equal(a[0, 1], b[0, 0])  # score 5 → same colour in both frames
    assert np.array_equal(colorize_scores(np.array([[10.0]]), 0, 10), colorize_scores(np.array([[99.0]]), 0, 10))
    with pytest.raises(ValueError, match="high > low"):
        colorize_scores(np.zeros((1, 1)), 1.0, 1.0)


def test_overlay_outlines_pixels_above_threshold():
    rgb = np.zeros((40, 40, 3), np.uint8)
    scores = np.zeros((40, 40), np.float32)
    scores[10:30, 10:30] = 1.0
    out = overlay(rgb, scores, 0.0, 1.0, threshold=0.5, alpha=0.0, contour_color=(255, 255, 255))
    assert (out[10, 10:30] == 255).all()  # contour on the square's edge
    assert (out[20, 20] == 0).all() and (out[2, 2] == 0).all()  # alpha 0: camera image elsewhere


def test_predict_command_writes_all_outputs(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (72, 100, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), rgb)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "frame.png"), "--out", str(out), "--size", "128x64"]) == 0
    assert cv2.imread(str(out / "frame_semantic.png"), cv2.IMREAD_UNCHANGED).shape == (72, 100)
    assert cv2.imread(str(out / "frame_semantic_color.png")).shape == (72, 100, 3)
    assert cv2.imread(str(out / "frame_overlay.png")).shape == (72, 100, 3)
    assert cv2.imread(str(out / "frame_anomaly.png")).shape == (72, 100, 3)
    assert np.load(out / "frame_anomaly.npy").shape == (72, 100)


def test_predict_command_reports_missing_inputs_without_traceback(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.jpg"), "--out", str(tmp_path)]) == 2
    assert "no such image or folder" in capsys.readouterr().err
