"""The evaluation suite: several labelled sets in one command, one table per set, means over sets."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rpl_perception.cli import main
from rpl_perception.eval.suite import load_suite, native_size, suite_summary, suite_table


def _anomaly_set(root: Path, count: int, seed: int, shape=(64, 128)) -> Path:
    """images/N.png + labels_masks/N.png (0 in, 1 anomaly, 255 void): a bright box on grey noise."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(count):
        image = rng.integers(60, 120, size=shape + (3,), dtype=np.uint8)
        label = np.zeros(shape, np.uint8)
        label[20:40, 40 + 10 * i:70 + 10 * i] = 1
        label[-3:] = 255
        image[label == 1] = (240, 30, 200)
        cv2.imwrite(str(root / "images" / f"{i}.png"), image)
        cv2.imwrite(str(root / "labels_masks" / f"{i}.png"), label)
    return root


@pytest.fixture()
def suite_file(tmp_path):
    _anomaly_set(tmp_path / "sets" / "road_anomaly21", 2, 0)
    _anomaly_set(tmp_path / "sets" / "fishyscapes_static", 3, 1, shape=(64, 100))
    path = tmp_path / "suites" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text("sets:\n"
                    "  - {name: Anomaly set, kind: smiyc_anomaly_track, root: ../sets/road_anomaly21}\n"
                    "  - {name: Static set, root: ../sets/fishyscapes_static}\n")
    return path


def test_load_suite_resolves_paths_next_to_the_file_and_checks_entries(suite_file, tmp_path):
    sets = load_suite(suite_file)
    assert [s.name for s in sets] == ["Anomaly set", "Static set"]
    assert [s.kind for s in sets] == ["smiyc_anomaly_track", "auto"]
    assert sets[0].root == (tmp_path / "sets" / "road_anomaly21").resolve() and sets[1].slug == "static_set"
    bad = tmp_path / "bad.yaml"
    bad.write_text("sets:\n  - {name: x, kind: nonsense, root: .}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml, set 'x': unknown kind 'nonsense'"):
        load_suite(bad)
    bad.write_text("sets:\n  - {name: x}\n")
    with pytest.raises(ValueError, match=r"set #1: needs 'name' and 'root'"):
        load_suite(bad)
    bad.write_text("sets:\n  - {name: x, root: a}\n  - {name: x, root: b}\n")
    with pytest.raises(ValueError, match="distinct"):
        load_suite(bad)
    with pytest.raises(ValueError, match="cannot read suite file"):
        load_suite(tmp_path / "missing.yaml")


def test_native_size_rounds_up_to_the_divisor():
    assert native_size((2048, 1024), 32) == (2048, 1024)
    assert native_size((1920, 1080), 32) == (1920, 1088)
    assert native_size((1280, 720), 32) == (1280, 736)
    assert native_size((100, 64), 1) == (100, 64)


def test_cli_suite_writes_a_report_per_set_and_the_means(suite_file, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "--suite", str(suite_file), "--out", str(out), "--size", "128x64", "--scores",
                 "rpl_energy,energy", "--no-components"]) == 0
    printed = capsys.readouterr().out
    assert "Anomaly set (2 images, network 128x64)" in printed and "Static set (3 images" in printed
    assert f"report: {out / 'suite.md'}" in printed
    summary = json.loads((out / "suite.json").read_text())["summary"]
    for score in ("rpl_energy", "energy"):
        per_set = [json.loads((out / slug / "report.json").read_text())["metrics"][score]
                   for slug in ("anomaly_set", "static_set")]
        assert summary[score]["sets"]["Anomaly set"]["ap"] == pytest.approx(per_set[0]["ap"])
        assert summary[score]["mean_ap"] == pytest.approx((per_set[0]["ap"] + per_set[1]["ap"]) / 2)
        assert summary[score]["mean_fpr95"] == pytest.approx((per_set[0]["fpr95"] + per_set[1]["fpr95"]) / 2)
        summary_md = (out / "suite.md").read_text().split("## Summary")[1]
        row = next(line for line in summary_md.splitlines() if line.startswith(f"| {score} |"))
        assert row.endswith(f"| {100 * summary[score]['mean_ap']:.1f} | {100 * summary[score]['mean_fpr95']:.1f} |")
    assert (out / "static_set" / "report.md").is_file() and (out / "anomaly_set" / "pr_curve.png").is_file()


def test_cli_suite_at_native_size(suite_file, tmp_path, capsys):
    out = tmp_path / "native"
    assert main(["eval", "--suite", str(suite_file), "--out", str(out), "--native-size", "--scores", "energy",
                 "--no-components"]) == 0
    sizes = json.loads((out / "suite.json").read_text())["network_sizes"]
    assert sizes == {"Anomaly set": [128, 64], "Static set": [128, 64]}  # 100 px rounded up to 128
    assert "Static set (3 images, network 128x64)" in capsys.readouterr().out
    assert main(["eval", "--suite", str(suite_file), "--out", str(out), "--native-size", "--size", "64x64"]) == 2


def test_suite_table_marks_missing_metrics(suite_file):
    from rpl_perception.eval.evaluation import EvaluationResult
    from rpl_perception.eval.suite import SuiteResult, load_suite

    sets = load_suite(suite_file)
    results = {sets[0].name: EvaluationResult({"metrics": {"energy": {"ap": 0.5, "fpr95": 0.25, "auroc": 0.9}}}),
               sets[1].name: EvaluationResult({"metrics": {"energy": {"error": "no anomaly pixel"}}})}
    result = SuiteResult(sets, results, {s.name: (128, 64) for s in sets})
    summary = suite_summary(result)
    assert summary["energy"]["mean_ap"] is None  # a mean over fewer sets would not be comparable
    assert "| energy | 50.0 / 25.0 | – / – | – | – |" in suite_table(result)
