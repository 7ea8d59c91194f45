"""Offline / recorded / live evaluation: several scores from one pass, streaming metrics, bags."""

import dataclasses
import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="bag evaluation needs the rosbags package (pip install '.[eval]')")

from rpl_perception import AnomalySegmenter  # noqa: E402
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model  # noqa: E402
from rpl_perception.cli import main  # noqa: E402
from rpl_perception.eval.bags import BagFrame, ImageBagWriter, write_frames  # noqa: E402
from rpl_perception.eval.evaluation import Evaluation, latency_summary
from rpl_perception.eval.frames import EvalFrame, frames_from_bag
from rpl_perception.eval.live import NodeOptions, evaluate_live
from rpl_perception.eval.metrics import ComponentMetricAccumulator, miou, pixel_metrics, to_float16  # noqa: E402
from rpl_perception.eval.offline import MultiScorePredictor, evaluate_offline
from rpl_perception.eval.recorded import evaluate_recorded
from rpl_perception.models import RPLNetwork, get_architecture  # noqa: E402

NETWORK_SIZE = (128, 64)
START_NS = 1_600_000_000_000_000_000


@pytest.fixture(scope="module")
def segmenter():
    """The embedded segmenter without its RPL branch: the closed-set scores only."""
    network, meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)
    return AnomalySegmenter(network, meta, network_size=NETWORK_SIZE)


def blob_label(rng, height, width, void_rows=2):
    label = np.zeros((height, width), np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    label[top:top + height // 3, left:left + width // 3] = 1
    label[-void_rows:] = 255
    return label


def synthetic_frames(count=3, height=40, width=72, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frames.append(BagFrame(image, blob_label(rng, height, width)))
    return frames


# ----------------------------------------------------------------------------- one pass, several scores

def test_multi_score_maps_equal_the_core_for_each_score(segmenter):
    image = np.random.default_rng(3).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    predictor = MultiScorePredictor(segmenter)
    assert predictor.scores == ("energy", "max_logit", "max_softmax", "entropy")  # no RPL weights
    (labels, maps), = predictor.predict_batch([image])
    for name in ("energy", "entropy"):
        single = AnomalySegmenter(segmenter.network, segmenter.meta, score=name, network_size=NETWORK_SIZE)
        expected = single.predict(image)
        np.testing.assert_array_equal(maps[name], expected.anomaly)
        np.testing.assert_array_equal(labels, expected.labels)
    assert maps["energy"].dtype == np.float32 and maps["energy"].shape == (50, 90)
    (labels, maps), = predictor.predict_batch([image], sizes=[(30, 20)])  # e.g. a label of another size
    assert labels.shape == (20, 30) and maps["max_softmax"].shape == (20, 30)


def test_multi_score_rpl_energy_uses_the_branch(segmenter):
    import torch

    arch = get_architecture(segmenter.meta.architecture)
    torch.manual_seed(0)  # the branch's random (Kaiming) initialisation
    branch = arch.build_rpl_branch(segmenter.network.closed_set, 64, "pyramid")
    network = RPLNetwork(segmenter.network.closed_set, branch).eval()
    meta = dataclasses.replace(segmenter.meta, rpl_width=64, rpl_design="pyramid")
    with_branch = AnomalySegmenter(network, meta, score="rpl_energy", network_size=NETWORK_SIZE)
    image = np.random.default_rng(4).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    predictor = MultiScorePredictor(with_branch)
    assert predictor.scores[0] == "rpl_energy"
    (labels, maps), = predictor.predict_batch([image])
    np.testing.assert_array_equal(maps["rpl_energy"], with_branch.predict(image).anomaly)
    closed = AnomalySegmenter(network, meta, score="energy", network_size=NETWORK_SIZE).predict(image)
    np.testing.assert_array_equal(maps["energy"], closed.anomaly)
    assert not np.array_equal(maps["rpl_energy"], maps["energy"])


def test_multi_score_rejects_scores_the_model_lacks(segmenter):
    with pytest.raises(ValueError, match="rpl_energy needs RPL weights"):
        MultiScorePredictor(segmenter, ["rpl_energy"])
    with pytest.raises(ValueError, match="available: energy, max_logit"):
        MultiScorePredictor(segmenter, ["energy", "odin"])


# ----------------------------------------------------------------------------- streaming accumulators

def test_evaluation_matches_the_metric_functions():
    rng = np.random.default_rng(7)
    frames, scores, semantic_pred = [], [], []
    for i in range(5):
        label = blob_label(rng, 30, 50)
        if i == 2:
            label[label == 1] = 0  # a frame without anomaly: scored, but no per-frame AP
        score = (rng.standard_normal((30, 50)) + 1.5 * (label == 1)).astype(np.float32)
        semantic = rng.integers(0, 19, (30, 50), dtype=np.uint8)
        frames.append(EvalFrame(f"f{i}", None, label, semantic))
        scores.append(score)
        semantic_pred.append(np.where(rng.random((30, 50)) < 0.7, semantic, 3).astype(np.uint8))
    evaluation = Evaluation(["a", "b"], thresholds={"a": 1.0}, component_sizes=(5, 3), num_worst=2)
    for frame, score, pred in zip(frames, scores, semantic_pred):
        evaluation.update(frame, {"a": score, "b": -score}, pred)
    result = evaluation.result(mode="test")
    labels = [f.label for f in frames]
    expected = pixel_metrics([to_float16(s) for s in scores], labels)
    assert result.metrics["a"]["ap"] == pytest.approx(expected["ap"], abs=1e-12)
    assert result.metrics["b"]["auroc"] == pytest.approx(
        pixel_metrics([to_float16(-s) for s in scores], labels)["auroc"], abs=1e-12)
    component = ComponentMetricAccumulator(1.0, 5, 3)
    for score, label in zip(scores, labels):
        component.update(score, label)
    assert result.metrics["a"]["component_f1"] == pytest.approx(component.compute()["f1"])
    assert "component_f1" not in result.metrics["b"]  # no threshold recorded for "b"
    expected_miou = miou(semantic_pred, [f.semantic for f in frames])["miou"]
    assert result.summary["semantic"]["miou"] == pytest.approx(expected_miou)
    per_frame = sorted((pixel_metrics(to_float16(s), l)["ap"], f.name) for s, l, f in zip(scores, labels, frames)
                       if (l == 1).any())
    assert [w.name for w in result.worst_frames] == [name for _, name in per_frame[:2]]
    assert [w.ap for w in result.worst_frames] == pytest.approx([ap for ap, _ in per_frame[:2]])
    assert result.summary["num_frames"] == 5 and result.summary["mode"] == "test"
    values, inlier, anomaly = result.histograms["a"]
    assert inlier.sum() == sum(int((l == 0).sum()) for l in labels)
    assert anomaly.sum() == sum(int((l == 1).sum()) for l in labels)
    assert np.all(np.diff(values) > 0)
    assert result.curves["a"]["fpr"][0] == 0 and result.curves["a"]["tpr"][-1] == 1


def test_evaluation_errors_and_latency_summary():
    with pytest.raises(ValueError, match="primary score 'x' is not among"):
        Evaluation(["a"], primary="x")
    evaluation = Evaluation(["a", "b"])
    with pytest.raises(ValueError, match=r"no map for score\(s\) \['b'\]"):
        evaluation.update(EvalFrame("f", None, np.zeros((2, 2), np.uint8)), {"a": np.zeros((2, 2))})
    summary = latency_summary([0.010, 0.020, 0.030, 0.040])
    assert summary == pytest.approx({"p50_ms": 25.0, "p95_ms": 38.5, "mean_ms": 25.0, "max_ms": 40.0})
    assert latency_summary([])["p50_ms"] is None


# ----------------------------------------------------------------------------- offline and recorded

def test_offline_evaluation_of_a_bag_equals_the_core(tmp_path, segmenter):
    frames = synthetic_frames()
    write_frames(tmp_path / "bag", frames, start_ns=START_NS, rate_hz=5)
    stream, total = frames_from_bag(tmp_path / "bag", "/cam/image_raw")
    result = evaluate_offline(segmenter, stream, total=total, progress=False, num_worst=1)
    predictions = [segmenter.predict(f.image).anomaly for f in frames]
    expected = pixel_metrics([to_float16(p) for p in predictions], [f.label for f in frames])
    assert result.metrics["energy"]["ap"] == pytest.approx(expected["ap"], abs=1e-12)
    assert result.metrics["energy"]["fpr95"] == pytest.approx(expected["fpr95"], abs=1e-12)
    assert set(result.metrics) == {"energy", "max_logit", "max_softmax", "entropy"}
    assert result.summary["num_labelled"] == 3 and result.summary["primary_score"] == "energy"
    assert result.summary["settings"]["network_size"] == list(NETWORK_SIZE)
    assert len(result.worst_frames) == 1 and result.worst_frames[0].name.startswith("#")
    batched, _ = frames_from_bag(tmp_path / "bag", "/cam/image_raw")
    in_twos = evaluate_offline(segmenter, batched, batch_size=2, progress=False)
    assert in_twos.metrics["entropy"]["auroc"] == pytest.approx(result.metrics["entropy"]["auroc"], abs=1e-3)


def write_recorded_bag(path, frames, scores, delays_ns, missing=()):
    """A bag as `ros2 bag record` makes it next to the node: camera, labels, the node's outputs."""
    with ImageBagWriter(path) as bag:
        for i, (frame, score) in enumerate(zip(frames, scores)):
            stamp = START_NS + i * 100_000_000
            bag.write("/cam/image_raw", frame.image, stamp, encoding="rgb8")
            bag.write("/cam/labels", frame.label, stamp, encoding="mono8")
            if i not in missing:
                bag.write("/cam/anomaly", score, stamp, encoding="32FC1", log_time_ns=stamp + delays_ns[i])
                bag.write("/cam/semantic", np.zeros(frame.label.shape, np.uint8), stamp, encoding="mono8",
                          log_time_ns=stamp + delays_ns[i])


def test_recorded_evaluation_scores_the_node_outputs(tmp_path, segmenter):
    frames = synthetic_frames(4)
    rng = np.random.default_rng(5)
    scores = [(rng.standard_normal(f.label.shape) + (f.label == 1)).astype(np.float32) for f in frames]
    write_recorded_bag(tmp_path / "bag", frames, scores, delays_ns=[30_000_000, 50_000_000, 0, 70_000_000], missing={2})
    result = evaluate_recorded(tmp_path / "bag", "/cam/image_raw", score="energy", meta=segmenter.meta,
                               progress=False)
    kept = [0, 1, 3]
    expected = pixel_metrics([to_float16(scores[i]) for i in kept], [frames[i].label for i in kept])
    assert result.metrics["energy"]["ap"] == pytest.approx(expected["ap"], abs=1e-12)
    delivery = result.summary["delivery"]
    assert (delivery["frames_sent"], delivery["frames_delivered"]) == (4, 3)
    assert delivery["delivered_ratio"] == pytest.approx(0.75)
    assert delivery["latency"]["p50_ms"] == pytest.approx(50.0) and delivery["latency"]["max_ms"] == pytest.approx(70.0)
    assert result.summary["settings"]["threshold"]["energy"] == segmenter.meta.anomaly_threshold["energy"]


def test_recorded_evaluation_needs_the_outputs(tmp_path):
    write_frames(tmp_path / "bag", synthetic_frames(1))
    with pytest.raises(ValueError, match="has no topic /cam/anomaly"):
        evaluate_recorded(tmp_path / "bag", "/cam/image_raw", progress=False)
    with pytest.raises(ValueError, match="has no topic /front/image"):
        frames_from_bag(tmp_path / "bag", "/front/image")


def test_cli_eval_offline_and_recorded(tmp_path, capsys):
    frames = synthetic_frames(2)
    write_frames(tmp_path / "bag", frames, start_ns=START_NS)
    size = f"{NETWORK_SIZE[0]}x{NETWORK_SIZE[1]}"
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(tmp_path / "report"), "--size", size,
                 "--scores", "energy,entropy", "--no-components"]) == 0
    out = capsys.readouterr().out
    assert "| score | AP ↑ | FPR95 ↓ | AUROC ↑ |" in out and "| entropy |" in out and "max_logit" not in out
    assert (tmp_path / "report" / "report.md").is_file()
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(tmp_path / "r2"), "--mode", "recorded"]) == 2
    assert "has no topic /cam/anomaly" in capsys.readouterr().err
    assert main(["eval", "--dataset", "auto", str(tmp_path), "--mode", "live", "--out", str(tmp_path / "r3")]) == 2
    assert "--dataset works in offline mode only" in capsys.readouterr().err


# ----------------------------------------------------------------------------- live, over DDS

def _ros_available():
    return all(importlib.util.find_spec(name) for name in ("rclpy", "sensor_msgs"))


@pytest.mark.skipif(not _ros_available(), reason="live mode needs rclpy and sensor_msgs (pip install '.[ros]')")
def test_live_evaluation_through_the_node(tmp_path, segmenter, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))  # away from other tests and machines
    frames = synthetic_frames(3, 48, 96, seed=11)
    write_frames(tmp_path / "bag", frames, start_ns=START_NS, rate_hz=2.0)
    result = evaluate_live(tmp_path / "bag", "/cam/image_raw", score="energy", meta=segmenter.meta,
                           node_options=NodeOptions(score="energy", network_size=NETWORK_SIZE), timeout_s=30.0,
                           record=tmp_path / "recorded", progress=False)
    delivery = result.summary["delivery"]
    assert (delivery["frames_sent"], delivery["frames_delivered"]) == (3, 3)
    assert 0 < delivery["latency"]["p50_ms"] <= delivery["latency"]["max_ms"] < 30_000
    offline, _ = frames_from_bag(tmp_path / "bag", "/cam/image_raw")
    expected = evaluate_offline(segmenter, offline, scores=["energy"], progress=False)
    # the node runs the same model on the same frames; its backend ("auto") may be another one than
    # torch's, and scores that differ in the last float32 bits can round to neighbouring float16 values
    for key in ("ap", "fpr95", "auroc"):
        assert result.metrics["energy"][key] == pytest.approx(expected.metrics["energy"][key], abs=1e-4)
    again = evaluate_recorded(tmp_path / "recorded", "/cam/image_raw", score="energy", progress=False)
    assert again.summary["delivery"]["frames_delivered"] == 3
    assert again.metrics["energy"]["ap"] == pytest.approx(result.metrics["energy"]["ap"], abs=1e-12)


# ----------------------------------------------------------------------------- real data

def test_offline_eval_on_roadanomaly_dev(tmp_path, roadanomaly_dev, capsys):
    """All 15 RoadAnomaly dev frames through a bag at the model's 1024×512, scored at label size."""
    bag = tmp_path / "roadanomaly"
    assert main(["bag", "make", str(bag), "--dataset", "road_anomaly", str(roadanomaly_dev), "--rate", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", "--bag", str(bag), "--out", str(tmp_path / "report")]) == 0
    table = capsys.readouterr().out
    with capsys.disabled():
        print("\nRoadAnomaly dev (15 frames), offline, ESPNetv2 1024×512:\n" + table)
    import json

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["num_labelled"] == 15
    for name in ("rpl_energy", "energy", "max_logit", "max_softmax", "entropy"):
        assert {"ap", "fpr95", "auroc"} <= set(report["metrics"][name])
        assert f"| {name}" in table
    # closed-set energy AP measured at native label resolution (1280×720): 0.236 (float16 rounding: 0.2373)
    assert report["metrics"]["energy"]["ap"] == pytest.approx(0.236, abs=0.01)
    # the embedded RPL branch (docs/rpl_training.md): what its model file records for this set
    recorded = load_model(DEFAULT_CHECKPOINT)[1].provenance["evaluation"]["summary"]["rpl_energy"]["sets"]
    assert report["primary_score"] == "rpl_energy"
    assert report["metrics"]["rpl_energy"]["ap"] == pytest.approx(recorded["RoadAnomaly dev"]["ap"], abs=0.005)
    assert report["metrics"]["rpl_energy"]["fpr95"] == pytest.approx(recorded["RoadAnomaly dev"]["fpr95"], abs=0.005)
    assert report["metrics"]["rpl_energy"]["ap"] > report["metrics"]["energy"]["ap"] + 0.05
