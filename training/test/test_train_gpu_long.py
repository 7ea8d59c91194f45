"""scripts/train_gpu_long.py on the CPU (its smoke mode): the long recipe's one-call runner trains to
its budget, returns the checkpoints, the curve and a summary, and continues a run it brought back."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rpl_training.train import STATE_FILE, train
from rpl_training.utils import read_log
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
    assert (out / "curves.png").stat().st_size > 1000 and summary["curves"]
    saved = yaml.safe_load((out / "run" / "config.yaml").read_text())
    assert saved["train"]["device"] == "cpu" and saved["train"]["compile"] is False
    assert saved["data"]["outlier"]["on_road"]["cache_dir"] == str((out / "run" / "road_masks").resolve())
    assert any((out / "run" / "road_masks").rglob("*.png"))  # masks made for the on-road share, carried in run/
    assert "road_masks" in summary["files"] and not (out / "run" / "checkpoints").exists()  # run/ stays small
    assert summary["checkpoints"] == ["iteration_000002.safetensors", "iteration_000004.safetensors"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == summary["checkpoints"]


def test_a_run_brought_back_is_continued(tiny_data, tmp_path):
    script = load_script("train_gpu_long")
    config = _config_file(tiny_data, tmp_path)
    first = tmp_path / "first"
    cfg = script.build_config(script.parse_args(["--out", str(first), "--config", str(config), "--device", "cpu",
                                                 "--workers", "0"]), (first / "run").resolve())
    partial = train(cfg, stop_after=2)
    assert partial.iteration == 2 and (first / "run" / STATE_FILE).is_file()
    masks = sorted(p.relative_to(first / "run") for p in (first / "run" / "road_masks").rglob("*.png"))
    assert masks
    carried = tmp_path / "carried"  # what came back from the first machine; that machine's folders are gone
    shutil.copytree(first / "run", carried)
    shutil.rmtree(first)
    # a run begun by older code: its config.yaml lacks the keys added since, its state the best's FPR95
    saved = yaml.safe_load((carried / "config.yaml").read_text())
    del saved["validation"]["keep_checkpoints"], saved["data"]["outlier"]["on_road"]["rows"]
    (carried / "config.yaml").write_text(yaml.safe_dump(saved))
    state = torch.load(carried / STATE_FILE, weights_only=True)
    fpr95 = state["best"].pop("fpr95")
    del state["calibration"], state["val_metrics"]
    torch.save(state, carried / STATE_FILE)
    second = tmp_path / "second"
    assert script.main(["--out", str(second), "--config", str(config), "--device", "cpu", "--workers", "0",
                        "--resume-from", str(carried)]) == 0
    summary = json.loads((second / "summary.json").read_text())
    assert summary["resumed"] and summary["iteration"] == 4 and summary["finished"]
    saved = yaml.safe_load((second / "run" / "config.yaml").read_text())
    assert saved["output_dir"] == str((second / "run").resolve())
    assert saved["data"]["outlier"]["on_road"]["rows"] == "any" and saved["validation"]["keep_checkpoints"]
    resumed_best = torch.load(second / "run" / STATE_FILE, weights_only=True)["best"]
    assert resumed_best["fpr95"] in (fpr95, *_validation_fpr95s(second / "run"))
    assert saved["data"]["outlier"]["on_road"]["cache_dir"] == str((second / "run" / "road_masks").resolve())
    assert sorted(p.relative_to(second / "run") for p in (second / "run" / "road_masks").rglob("*.png")) == masks


def _validation_fpr95s(run: Path):
    return [row["fpr95"] for row in read_log(run / "validation.csv")]


def test_a_resumed_run_takes_this_machines_paths_and_keeps_its_recipe():
    script = load_script("train_gpu_long")
    saved = {"output_dir": "/old/run", "seed": 1,
             "model": {"segmenter": None, "rpl_width": 128},
             "data": {"inlier": [{"kind": "frames", "root": "/old/data/a"}, {"kind": "idd", "root": "/old/data/b"}],
                      "outlier": {"root": ["/old/data/coco"], "on_road": {"share": 0.5, "cache_dir": "/old/masks"}},
                      "num_workers": 1},
             "train": {"device": "cpu", "amp": False, "threads": 1, "compile": True, "iterations": 8000, "lr": 5e-4},
             "validation": {"suite": "/old/suite.yaml", "root": None, "every": 500}}
    fresh = json.loads(json.dumps(saved).replace("/old/", "/new/"))
    fresh["train"].update(device="cuda", amp=True, threads=None, compile=False, iterations=4, lr=1.0)
    fresh["data"]["num_workers"] = 12
    fresh["data"]["outlier"]["on_road"]["share"] = 0.0
    cfg = script.for_this_machine(saved, fresh)
    assert "/old/" not in json.dumps(cfg)
    assert cfg["train"] == {"device": "cuda", "amp": True, "threads": None, "compile": False, "iterations": 8000,
                            "lr": 5e-4}
    assert cfg["data"]["num_workers"] == 12 and cfg["data"]["outlier"]["on_road"]["share"] == 0.5
    assert saved["output_dir"] == "/old/run"  # the saved config is not modified
    fresh["data"]["inlier"] = fresh["data"]["inlier"][:1]
    with pytest.raises(SystemExit, match="other inlier sources"):
        script.for_this_machine(saved, fresh)


def test_road_masks_prepared_elsewhere_are_carried_to_a_moved_data_root(tiny_data, tmp_path):
    """--road-masks: the masks one machine prepared serve another whose data lie elsewhere; none is computed."""
    script = load_script("train_gpu_long")
    first = tmp_path / "first"
    assert script.main(["--out", str(first), "--config", str(_config_file(tiny_data, tmp_path)), "--device", "cpu",
                        "--workers", "0", "--set", "train.iterations=1", "--set", "validation.every=0"]) == 0
    prepared = sorted(p.relative_to(first / "run" / "road_masks") for p in (first / "run" / "road_masks").rglob("*.png"))
    assert prepared and "computed now" in (first / "run" / "train.log").read_text()
    moved = dict(tiny_data, cityscapes=shutil.copytree(tiny_data["cityscapes"], tmp_path / "elsewhere" / "cityscapes"))
    second = tmp_path / "second"
    (tmp_path / "moved_config").mkdir()
    assert script.main(["--out", str(second), "--config", str(_config_file(moved, tmp_path / "moved_config")),
                        "--device", "cpu", "--workers", "0", "--set", "train.iterations=1",
                        "--set", "validation.every=0", "--road-masks", str(first / "run" / "road_masks")]) == 0
    log = (second / "run" / "train.log").read_text()
    assert "(0 computed now)" in log and str(tmp_path / "elsewhere") in (second / "run" / "config.yaml").read_text()
    assert sorted(p.relative_to(second / "run" / "road_masks")
                  for p in (second / "run" / "road_masks").rglob("*.png")) == prepared
    for wrong, problem in ((tmp_path / "nowhere", "not a folder"),
                           (next((first / "run" / "road_masks").iterdir()), "holds masks itself")):
        with pytest.raises(SystemExit, match=problem):
            script.main(["--out", str(tmp_path / "third"), "--config", str(_config_file(tiny_data, tmp_path)),
                         "--device", "cpu", "--road-masks", str(wrong)])
