"""The README's main job: bundled frames → bag → anomaly_node over DDS → recorded bag → report."""

import importlib.util
import json
import os

import numpy as np
import pytest

from rpl_perception.cli import main
from rpl_perception.commands.demo import sample_frames
from rpl_perception.eval.bags import bag_topics
from rpl_perception.eval.frames import frames_from_bag


def test_sample_frames_are_the_drive_clip_then_the_stills():
    frames, count = sample_frames()
    frames = list(frames)
    assert len(frames) == count == 20
    assert sample_frames(3)[1] == 3
    assert all(f.label is None for f in frames[:10])  # Udacity clip: unlabelled inliers
    labelled = [f for f in frames if f.label is not None]
    assert len(labelled) == 8  # RoadAnomaly scenes
    for frame in labelled:
        assert frame.label.shape == frame.image.shape[:2] and frame.label.dtype == np.uint8
        assert set(np.unique(frame.label)) == {0, 1}  # raw 2 (anomaly) mapped to 1, no void in this set
    assert all(f.image.shape == (720, 1280, 3) for f in frames[:10])


@pytest.mark.skipif(not all(importlib.util.find_spec(n) for n in ("rclpy", "sensor_msgs")),
                    reason="the demo runs the ROS 2 node: needs rclpy and sensor_msgs (pip install '.[ros,eval]')")
def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(60 + os.getpid() % 80))  # away from other tests and machines
    out = tmp_path / "demo"
    # a small network input keeps the node fast; everything else is the README command
    assert main(["demo", "--out", str(out), "--size", "256x128"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.md'}" in printed
    assert "delivered 20/20 frames" in printed
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["mode"] == "live" and report["settings"]["lockstep"] is True
    assert report["num_frames"] == 20 and report["num_labelled"] == 8
    assert report["primary_score"] == "rpl_energy"  # the embedded default carries the trained branch
    metrics = report["metrics"]["rpl_energy"]
    assert 0.0 < metrics["ap"] < 1.0 and 0.5 < metrics["auroc"] <= 1.0
    for name in ("report.md", "pr_curve.png", "roc_curve.png", "worst_frames.png"):
        assert (out / "report" / name).stat().st_size > 0
    replayed, _ = frames_from_bag(out / "bag", "/cam/image_raw")  # in camera order, labelled or not
    expected = [f.label is not None for f in sample_frames()[0]]
    assert [f.label is not None for f in replayed] == expected
    recorded = bag_topics(out / "recorded")
    assert {topic: count for topic, (_, count) in recorded.items()} == {
        "/cam/image_raw": 20, "/cam/labels": 8, "/cam/anomaly": 20, "/cam/semantic": 20}

    # again into the same folder: the previous demo's bags are replaced, not refused
    assert main(["demo", "--out", str(out), "--size", "256x128", "--max-frames", "2"]) == 0
    assert "delivered 2/2 frames" in capsys.readouterr().out
    assert bag_topics(out / "bag")["/cam/image_raw"][1] == 2


def test_demo_without_ros_names_the_fix(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rclpy" else real_find_spec(name, *a))
    assert main(["demo", "--out", "unused"]) == 2
    assert "needs rclpy, which cannot be imported: install the extras (pip install -e '.[ros,eval]'" \
        in capsys.readouterr().err
