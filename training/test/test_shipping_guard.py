"""The guard on shipping (docs/selection_rule.md): rpl_training.selection.guard_blockers and
scripts/make_default_model.py, which refuses — before any calibration, writing nothing — to replace a
model file whose recorded suite metrics the new model does not match or loses more than 5 AP on."""

import json
import shutil

import pytest

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model
from rpl_training.selection import guard_blockers
from rpl_training_testdata import load_script

RO21 = "SMIYC RoadObstacle21 val"


def test_guard_blockers_names_every_set_that_would_lose_more_than_5_ap():
    shipped = {"RoadAnomaly dev": 0.43, "RoadObstacle21": 0.183, "FS Static": 0.418}
    assert guard_blockers({"RoadAnomaly dev": 0.37, "RoadObstacle21": 0.40, "FS Static": 0.30}, shipped) == [
        "RoadAnomaly dev", "FS Static"]  # the mean rose; two sets fell by more than 5 AP
    assert guard_blockers({"RoadAnomaly dev": 0.38, "RoadObstacle21": 0.133, "FS Static": 0.368}, shipped) == []  # 5.0


@pytest.fixture()
def shipped(tmp_path):
    """A copy of the embedded model (it records its suite metrics) and a suite.json equal to them."""
    path = shutil.copy(DEFAULT_CHECKPOINT, tmp_path / "default.safetensors")
    meta = load_model(path, with_branch=False)[1]
    report = json.loads(json.dumps(meta.provenance["evaluation"]))
    assert meta.score == "rpl_energy" and RO21 in report["summary"]["rpl_energy"]["sets"]
    return path, report


def _refused(tmp_path, path, report, *extra):
    metrics = tmp_path / "suite.json"
    metrics.write_text(json.dumps(report))
    before = path.read_bytes()
    with pytest.raises(SystemExit) as refusal:
        load_script("make_default_model").main([str(DEFAULT_CHECKPOINT), "--calibration", str(tmp_path / "unused"),
                                                "--metrics", str(metrics), "--out", str(path), *extra])
    assert path.read_bytes() == before  # nothing written
    return str(refusal.value)


def test_make_default_model_refuses_a_model_that_loses_more_than_5_ap_on_a_set(tmp_path, shipped):
    path, report = shipped
    report["summary"]["rpl_energy"]["sets"][RO21]["ap"] -= 0.051
    message = _refused(tmp_path, path, report)
    assert message.startswith(f"guard: not replacing {path}: AP would fall more than 5 AP (rpl_energy → rpl_energy)")
    assert f"{RO21} (" in message and "RoadAnomaly dev" not in message
    report["summary"]["rpl_energy"]["sets"][RO21]["ap"] += 0.002  # 4.9 AP lower: passes
    (tmp_path / "ok.json").write_text(json.dumps(report))
    load_script("make_default_model").guard(tmp_path / "ok.json", path, "rpl_energy")


def test_make_default_model_refuses_metrics_that_do_not_compare(tmp_path, shipped):
    path, report = shipped
    closed_set_only = json.loads(json.dumps(report))
    del closed_set_only["summary"]["rpl_energy"]  # a model without a branch ships the energy: no rpl_energy
    message = _refused(tmp_path, path, closed_set_only)
    assert "has no rpl_energy AP on " in message and all(name in message for name in report["summary"]["energy"]["sets"])
    renamed = json.loads(json.dumps(report))
    sets = renamed["summary"]["rpl_energy"]["sets"]
    sets["another set"] = sets.pop(RO21)
    assert f"has no rpl_energy AP on {RO21}" in _refused(tmp_path, path, renamed)
    resized = dict(report, network_sizes=[[2048, 1024]])
    assert "was measured at network sizes [[2048, 1024]]" in _refused(tmp_path, path, resized)
    with pytest.raises(SystemExit, match="give --metrics"):
        load_script("make_default_model").main([str(DEFAULT_CHECKPOINT), "--calibration", "unused", "--out", str(path)])
