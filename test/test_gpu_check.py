"""scripts/gpu_check.py on the CPU (its --device cpu smoke mode): every code path a GPU run takes
except the GPU-only backends, and the JSON and Markdown it writes."""

import json

import pytest

from script_loader import load_script


def test_cpu_smoke_run_writes_parity_speed_and_training(tmp_path):
    pytest.importorskip("rpl_training", reason="the training step needs rpl_training (pip install -e ./training)")
    gpu_check = load_script("gpu_check")
    out = tmp_path / "out"
    assert gpu_check.main(["--device", "cpu", "--out", str(out), "--sizes", "128x64", "--batches", "1", "2",
                           "--frames", "1", "--warmup", "0", "--train-batch", "1", "--train-crop", "128x64",
                           "--train-steps", "1", "--cache-dir", str(tmp_path / "cache")]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    parity = {(r["backend"], r["precision"]): r for r in report["parity"]}
    assert set(parity) == {("torch", "fp32"), ("onnxruntime", "fp32")}
    assert parity["torch", "fp32"]["anomaly_max_abs_error"] == 0.0  # the reference itself
    assert parity["onnxruntime", "fp32"]["anomaly_max_abs_error"] <= 1e-4
    assert parity["onnxruntime", "fp32"]["label_agreement"] >= 0.999
    assert parity["onnxruntime", "fp32"]["frames"] == 20 and parity["torch", "fp32"]["anomaly_dtype"] == "float32"
    speed = [(r["backend"], r["batch"]) for r in report["speed"]]
    assert speed == [("torch", 1), ("onnxruntime", 1), ("torch", 2), ("onnxruntime", 2)]
    assert all(r["median_ms"] > 0 and r["fps"] > 0 for r in report["speed"])
    assert report["training"]["median_ms"] > 0 and report["training"]["loss_finite"]
    assert {s["case"] for s in report["skipped"]} == {"torch fp16", "tensorrt fp32", "tensorrt fp16"}
    text = (out / "gpu_check.md").read_text()
    assert "| onnxruntime | fp32 | 128x64 | 2 |" in text and "## Training step" in text


def test_budget_skips_speed_cases_and_missing_packages_are_named(tmp_path, monkeypatch, capsys):
    gpu_check = load_script("gpu_check")
    args = gpu_check.parse_args(["--device", "cpu", "--out", str(tmp_path), "--sizes", "128x64",
                                 "--batches", "1", "--frames", "1", "--warmup", "0", "--train-steps", "1",
                                 "--train-batch", "1", "--train-crop", "128x64", "--budget-s", "0"])
    report = gpu_check.run(args)
    assert report["speed"] == [] and len(report["parity"]) == 2
    assert any("time budget 0 s spent" in s["reason"] for s in report["skipped"])
    monkeypatch.setattr(gpu_check, "REQUIRED", gpu_check.REQUIRED + ("no_such_package_xyz",))
    with pytest.raises(SystemExit) as stop:
        gpu_check.preflight()
    assert stop.value.code == 2
    assert "missing no_such_package_xyz: pip install no_such_package_xyz" in capsys.readouterr().err
