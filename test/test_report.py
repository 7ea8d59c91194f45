"""Evaluation reports: JSON, Markdown and the plots."""

import json
import math

import cv2
import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="report plots need matplotlib (pip install '.[eval]')")

from rpl_perception.eval.evaluation import Evaluation  # noqa: E402
from rpl_perception.eval.frames import EvalFrame  # noqa: E402
from rpl_perception.eval.report import PLOTS, metrics_table, to_json_safe, write_report  # noqa: E402


def evaluation_result(num_frames=4, with_images=True, **summary):
    rng = np.random.default_rng(2)
    evaluation = Evaluation(["rpl_energy", "energy"], thresholds={"rpl_energy": 0.5, "energy": 0.5},
                            component_sizes=(5, 3), num_worst=2)
    for i in range(num_frames):
        label = np.zeros((60, 80), np.uint8)
        label[10 + 5 * i:30 + 5 * i, 20:40] = 1
        label[-5:] = 255
        noise = rng.standard_normal(label.shape).astype(np.float32)
        image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) if with_images else None
        evaluation.update(EvalFrame(f"frame{i}", image, label),
                          {"rpl_energy": noise + 3.0 * (label == 1), "energy": noise + 0.5 * (label == 1)})
    return evaluation.result(mode="offline", source="unit", settings={
        "display_range": {"rpl_energy": (-2.0, 4.0)}, "threshold": {"rpl_energy": 0.5}}, **summary)


def test_report_files_and_json(tmp_path):
    result = evaluation_result()
    written = write_report(result, tmp_path / "out")
    assert set(written) == set(PLOTS) | {"report.json", "report.md"}
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["mode"] == "offline" and data["num_labelled"] == 4
    for name in ("rpl_energy", "energy"):
        for key in ("ap", "fpr95", "auroc", "component_siou", "component_f1"):
            assert data["metrics"][name][key] == pytest.approx(result.metrics[name][key])
    assert data["settings"]["display_range"]["rpl_energy"] == [-2.0, 4.0]
    assert [w["name"] for w in data["worst_frames"]] == [w.name for w in result.worst_frames]
    for name in PLOTS:
        picture = cv2.imread(str(tmp_path / "out" / name))
        assert picture is not None and picture.shape[0] > 200 and picture.shape[1] > 300
        assert picture.std() > 10  # not a blank canvas


def test_markdown_puts_the_scores_side_by_side(tmp_path):
    result = evaluation_result(delivery={"frames_sent": 10, "frames_delivered": 8, "delivered_ratio": 0.8,
                                         "latency": {"p50_ms": 41.0, "p95_ms": 77.5, "mean_ms": 45.0, "max_ms": 90.0},
                                         "latency_clock": "publish → anomaly received"})
    write_report(result, tmp_path)
    text = (tmp_path / "report.md").read_text()
    rpl, energy = result.metrics["rpl_energy"], result.metrics["energy"]
    assert rpl["ap"] > energy["ap"] and rpl["fpr95"] < energy["fpr95"]  # the stronger score wins every column
    assert f"| rpl_energy (primary) | **{rpl['ap']:.4f}** | **{rpl['fpr95']:.4f}** | **{rpl['auroc']:.4f}** |" in text
    assert f"| energy | {energy['ap']:.4f} | {energy['fpr95']:.4f} | {energy['auroc']:.4f} |" in text
    assert "delivered: 8 of 10 frames (ratio **0.800**)" in text
    assert "p50 41.0 ms, p95 77.5 ms" in text
    for name in PLOTS:
        assert f"]({name})" in text


def test_worst_frames_without_camera_images(tmp_path):
    """A recording without the camera topic still gets a worst-frame figure (heatmaps only)."""
    result = evaluation_result(with_images=False)
    assert all(w.image is None for w in result.worst_frames)
    written = write_report(result, tmp_path)
    assert cv2.imread(str(written["worst_frames.png"])) is not None


def test_worst_frame_figure_grows_with_the_frames_shown(tmp_path):
    one = evaluation_result()
    one.worst_frames = one.worst_frames[:1]
    two = evaluation_result()
    h1 = cv2.imread(str(write_report(one, tmp_path / "a")["worst_frames.png"])).shape[0]
    h2 = cv2.imread(str(write_report(two, tmp_path / "b")["worst_frames.png"])).shape[0]
    assert h2 == pytest.approx(2 * h1, rel=0.05)


def test_no_ground_truth_gives_no_plots(tmp_path):
    evaluation = Evaluation(["energy"])
    evaluation.update(EvalFrame("f", np.zeros((4, 4, 3), np.uint8)), {"energy": np.zeros((4, 4), np.float32)})
    written = write_report(evaluation.result(mode="offline"), tmp_path)
    assert set(written) == {"report.json", "report.md"}
    assert "no anomaly ground truth" in (tmp_path / "report.md").read_text()


def test_metrics_table_bolds_the_best_of_each_column():
    summary = {"primary_score": "a", "metrics": {
        "a": {"ap": 0.5, "fpr95": 0.4, "auroc": 0.9},
        "b": {"ap": 0.6, "fpr95": 0.3, "auroc": 0.8, "component_f1": float("nan")}}}
    lines = metrics_table(summary).splitlines()
    assert lines[0] == "| score | AP ↑ | FPR95 ↓ | AUROC ↑ | mean F1 ↑ |"
    assert lines[2] == "| a (primary) | 0.5000 | 0.4000 | **0.9000** | – |"
    assert lines[3] == "| b | **0.6000** | **0.3000** | 0.8000 | – |"
    single = metrics_table({"primary_score": "a", "metrics": {"a": {"ap": 0.5, "fpr95": 0.4, "auroc": 0.9}}})
    assert "**" not in single  # nothing to compare against


def test_to_json_safe():
    value = {"a": np.float32(1.5), "b": [np.int64(3), float("nan")], "c": np.array([1.0, math.inf]), 4: (None,)}
    assert to_json_safe(value) == {"a": 1.5, "b": [3, None], "c": [1.0, None], "4": [None]}
    json.dumps(to_json_safe(value), allow_nan=False)


def test_plotted_roc_curve_is_scikit_learns():
    """The curves the report draws (PixelMetricAccumulator.curves) are scikit-learn's full ROC curve."""
    sk_metrics = pytest.importorskip("sklearn.metrics", reason="needs scikit-learn (test extra)")
    from rpl_perception.eval.metrics import PixelMetricAccumulator, to_float16

    rng = np.random.default_rng(9)
    label = (rng.random((40, 60)) < 0.2).astype(np.uint8)
    score = rng.standard_normal((40, 60)).astype(np.float32) + label
    accumulator = PixelMetricAccumulator()
    accumulator.update(score, label)
    curves = accumulator.curves()
    fpr, tpr, thresholds = sk_metrics.roc_curve(label.ravel(), to_float16(score).ravel().astype(np.float64),
                                                drop_intermediate=False)
    np.testing.assert_allclose(curves["fpr"], fpr)
    np.testing.assert_allclose(curves["tpr"], tpr)
    np.testing.assert_array_equal(curves["threshold"], thresholds[1:])  # scikit-learn starts at +inf
    np.testing.assert_array_equal(curves["recall"], curves["tpr"][1:])
