"""The core's small homes: reading image files, shipped files and model names, class-count ranges."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from rpl_perception.image import UnreadableImage, read_rgb
from rpl_perception.resources import DEFAULT_CHECKPOINT, SAMPLE_IMAGES, model_path, sample_images
from rpl_perception.scoring import generic_display_range


@pytest.fixture
def jpeg(tmp_path) -> Path:
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :16] = (200, 30, 10)
    path = tmp_path / "frame.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_read_rgb_gives_rgb_and_refuses_truncated_or_missing_files(jpeg, tmp_path):
    rgb = read_rgb(jpeg)
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8
    assert rgb[12, 4, 0] > 150 and rgb[12, 4, 2] < 60  # red stays red: RGB, not OpenCV's BGR
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[:-40])
    with pytest.raises(UnreadableImage, match="truncated JPEG") as caught:
        read_rgb(truncated)
    # a file problem and bad input at once: the CLI's ValueError handler reports it in one line
    assert isinstance(caught.value, OSError) and isinstance(caught.value, ValueError)
    with pytest.raises(UnreadableImage, match="cannot read"):
        read_rgb(tmp_path / "missing.png")


def test_predict_skips_a_truncated_file_and_says_why(jpeg, tmp_path, capsys):
    from rpl_perception.cli import main

    bad = tmp_path / "in" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(jpeg.read_bytes()[:-40])
    assert main(["predict", str(bad), "--out", str(tmp_path / "out"), "--size", "64x32"]) == 0
    assert f"skipped {bad}: truncated JPEG" in capsys.readouterr().out
    assert not (tmp_path / "out" / "bad_anomaly.npy").exists()


def test_shipped_files_and_model_names(monkeypatch, tmp_path):
    assert model_path("default") == DEFAULT_CHECKPOINT and DEFAULT_CHECKPOINT.is_file()
    assert model_path("models/x.safetensors") == Path("models/x.safetensors")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert model_path("~/x.safetensors") == tmp_path / "x.safetensors"
    images = sample_images()
    assert images and all(p.parent == SAMPLE_IMAGES and p.suffix == ".jpg" for p in images)
    assert images == sorted(images)


def test_the_entropy_colour_range_follows_the_model_class_count():
    assert generic_display_range("entropy", 19) == (0.0, math.log(19))
    assert generic_display_range("entropy", 7) == (0.0, math.log(7))
    assert generic_display_range("max_softmax", 19) == (0.0, 1.0)
    assert generic_display_range("rpl_energy", 19) == (-20.0, 0.0)
    with pytest.raises(ValueError, match="unknown score 'nope'"):
        generic_display_range("nope", 19)


def test_the_live_evaluation_names_the_node_parameters_from_the_node_table():
    from rpl_perception.eval.live import NodeOptions
    from rpl_perception.ros.parameters import PARAMETERS, ros_arguments

    options = NodeOptions("m.safetensors", "energy", (64, 32), 0.5, "cpu", "reliable", "torch", "fp32", "/c")
    command = options.command("/cam/image_raw")
    assert command[1:4] == ["-m", "rpl_perception.ros.node", "--ros-args"]
    assert command[4::2] == ["-p"] * len(command[4::2])
    values = dict(argument.split(":=", 1) for argument in command[5::2])
    assert set(values) <= {spec.name for spec in PARAMETERS}
    assert values == {"image_topics": "['/cam/image_raw']", "model": "m.safetensors", "score": "energy",
                      "smoothing_sigma": "0.5", "device": "cpu", "qos_reliability": "reliable", "backend": "torch",
                      "precision": "fp32", "cache_dir": "/c", "network_width": "64", "network_height": "32"}
    assert "score" not in " ".join(NodeOptions().command("/cam/image_raw"))  # unset: the node's default
    with pytest.raises(ValueError, match="anomaly_node has no parameter 'nope'"):
        ros_arguments({"nope": 1})
