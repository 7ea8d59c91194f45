"""scripts/train_gpu_long.py on the CPU (its smoke mode): the long recipe's one-call runner trains to
its budget, returns the checkpoints, the curve and a summary, and continues a run it brought back."""

import json
from pathlib import Path

import yaml

from rpl_training.train import STATE_FILE, train
from rpl_training_testdata import load_script, small_config


def _config_file(tiny_data, tmp_path) -> Path:
    cfg = small_config(tiny_data, tmp_path / "unused", f"validation.root={tiny_data['anomaly']}",
                       "validation.kind=folders", "validation.every=2", "validation.network_size=[128, 64]",
                       "data.outlier.on_road.share=0.5")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_one_call_trains_and_returns_the_run(tiny_data, tmp_path):
    out = tmp_path / "out"
    assert load_script("train_gpu_long").main(["--out", str(out), "--config", str(_config_file(tiny_data, tmp_path)),
                           "--device", "cpu", "--workers", "0", "--budget-s", "600"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iteration"] == 4 and summary["finished"] and not summary["resumed"]
    assert {"last.safetensors", "best.safetensors", "train_state.pt", "metrics.csv", "validation.csv"} <= set(
        summary["files"])
    assert (out / "curves.png").stat().st_size > 1000
    saved = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert saved["train"]["device"] == "cpu" and saved["train"]["compile"] is False
    assert saved["data"]["outlier"]["on_road"]["cache_dir"] == str((out / "road_masks").resolve())
    assert any((out / "road_masks").rglob("*.png"))  # masks made for the on-road share


def test_a_run_brought_back_is_continued(tiny_data, tmp_path):
    script = load_script("train_gpu_long")
    config = _config_file(tiny_data, tmp_path)
    first = tmp_path / "first"
    cfg = script.build_config(script.parse_args(["--out", str(first), "--config", str(config), "--device", "cpu",
                                                 "--workers", "0"]), (first / "run").resolve())
    partial = train(cfg, stop_after=2)
    assert partial.iteration == 2 and (first / "run" / STATE_FILE).is_file()
    second = tmp_path / "second"
    assert script.main(["--out", str(second), "--config", str(config), "--device", "cpu", "--workers", "0",
                        "--resume-from", str(first / "run")]) == 0
    summary = json.loads((second / "summary.json").read_text())
    assert summary["resumed"] and summary["iteration"] == 4 and summary["finished"]
