"""The training loop on tiny data on the CPU: loss, frozen closed-set network, checkpoints, resume, Ctrl-C, CLI."""

import csv
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rpl_perception import AnomalySegmenter
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model
from rpl_perception.models.rpl import SeparableASPP
from rpl_training import datasets as training_datasets
from rpl_training.config import DEFAULTS, ConfigError, load_config
from rpl_training.sample_stream import IterationBatchSampler, build_dataset, collate
from rpl_training.selection import best_of
from rpl_training.train import (
    KEPT_CHECKPOINTS,
    STATE_FILE,
    RPLTrainingModel,
    build_network,
    build_optimizer,
    forward_losses,
    main,
    train,
)
from rpl_training_testdata import CROP_HW, small_config

CONFIGS = Path(__file__).resolve().parents[1] / "rpl_training" / "configs"


def _run_config(tiny_data, out: Path, *overrides):
    return small_config(tiny_data, out, f"validation.root={tiny_data['anomaly']}", "validation.kind=folders",
                        "validation.every=2", "validation.network_size=[128, 64]", *overrides)


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    """4 iterations in one go, validating every 2."""
    cfg = _run_config(tiny_data, tmp_path_factory.mktemp("runs") / "uninterrupted")
    return cfg, train(cfg)


def _rows(path: Path, drop=("seconds_per_iteration",)):
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def _state(out: Path):
    return torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)


def _assert_same_state(a, b):
    assert a["iteration"] == b["iteration"]
    for part in ("branch", "projector"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for index, slot in a["optimizer"]["state"].items():
        for key, value in slot.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), f"optimizer {index}.{key} differs"
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert torch.equal(a["rng"][0]["corocl"], b["rng"][0]["corocl"])


def test_initialisation_as_the_official_code():
    torch.manual_seed(0)
    default, _, default_meta = build_network({"segmenter": None, "architecture": None, "rpl_width": None})
    assert (default_meta.rpl_design, default_meta.rpl_width) == ("aspp", 128)  # the shipped model's design
    assert isinstance(default.branch.context, SeparableASPP)
    network, projector, meta = build_network({"segmenter": None, "architecture": None, "rpl_width": 64,
                                              "rpl_design": "pyramid"})
    assert meta.rpl_width == 64 and meta.score == "rpl_energy"
    own_context = network.closed_set.bu_dec_l1.state_dict()  # ESPNetv2's context module, copied
    for key, value in network.branch.context.state_dict().items():
        assert torch.equal(value, own_context[key]), key
    assert projector.in_channels == 64 and projector.out_channels == network.closed_set.head_channels == 32
    for conv in (network.branch.residual, projector):  # Kaiming normal, fan-in; bias 0
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.15)
        assert not conv.bias.any()
    assert all(not p.requires_grad for p in network.closed_set.parameters())
    wider, wider_projector, _ = build_network({"segmenter": None, "architecture": None, "rpl_width": 96})
    assert wider_projector.in_channels == 96 and wider.branch.residual.in_channels == 96
    fine, _, fine_meta = build_network({"segmenter": None, "architecture": None, "rpl_width": 64,
                                        "rpl_design": "aspp_fine", "rpl_fine_channels": 16})
    assert (fine_meta.rpl_design, fine_meta.rpl_fine_channels, fine.branch.fine_channels) == ("aspp_fine", 16, 16)
    _, _, default_fine_meta = build_network({"segmenter": None, "architecture": None, "rpl_width": 64,
                                             "rpl_design": "aspp_fine"})
    assert default_fine_meta.rpl_fine_channels == 32  # the file records the width built, the default too
    assert default_meta.rpl_fine_channels is None  # aspp has no fine path


def test_a_few_steps_lower_the_loss(tiny_data, tmp_path):
    cfg = small_config(tiny_data, tmp_path / "run")
    torch.manual_seed(0)
    network, projector, meta = build_network(cfg["model"])
    dataset = build_dataset(cfg["data"], meta.mean, 0)
    batch = collate([dataset[k] for k in IterationBatchSampler(len(dataset), 2, 1, seed=0).keys(0)])
    batch.pop("skipped")
    assert (batch["label"] == 254).flatten(1).any(1).all()  # both crops got an object: CoroCL runs
    model = RPLTrainingModel(network, projector, meta.mean, meta.std, num_inlier=meta.num_inlier).train()
    optimizer = build_optimizer(network, projector, cfg["train"])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([7.5e-5, 7.5e-4])  # 10× for the final 1×1
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss, terms = forward_losses(model, batch, use_corocl=True, train_cfg=cfg["train"],
                                     generator=torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert loss.item() == pytest.approx(terms["total"].item() + terms["corocl"].item(), rel=1e-6)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.95 * losses[0]
    assert all(p.grad is None for p in network.closed_set.parameters())  # frozen: never receives gradients


def test_training_writes_runtime_checkpoints(uninterrupted, tiny_data):
    cfg, result = uninterrupted
    out = Path(cfg["output_dir"])
    assert result.iteration == 4 and not result.interrupted
    assert result.last_checkpoint == out / "last.safetensors" and result.best_checkpoint == out / "best.safetensors"

    segmenter = AnomalySegmenter.from_checkpoint(result.last_checkpoint, network_size=(128, 64))
    meta = segmenter.meta
    assert segmenter.score == "rpl_energy" and meta.rpl_width == 64
    low, high = segmenter.display_range
    assert low < high and meta.anomaly_threshold["rpl_energy"] == pytest.approx(meta.anomaly_threshold["rpl_energy"])
    training = meta.provenance["training"]
    assert training["iterations"] == 4 and training["config"] == cfg and "git_commit" in training
    assert training["data"]["inlier"]["root"] == str(tiny_data["cityscapes"].resolve())
    assert training["data"]["outlier_images"] == 3
    assert "validation set" in training["calibration"]
    # the segmenter file's record of its own branch (the shipped default's evaluation, calibration,
    # branch file) is not carried into a model whose branch was trained here
    shipped = load_model(DEFAULT_CHECKPOINT)[1].provenance
    assert {"evaluation", "rpl_branch"} <= shipped.keys()
    assert not {"evaluation", "rpl_branch", "calibration"} & meta.provenance.keys()
    assert meta.provenance["segmenter"] == shipped["segmenter"]
    assert set(training["metrics"]) >= {"loss", "ce", "reg", "energy", "corocl", "val_ap", "best_ap"}
    image = np.full((90, 150, 3), 100, np.uint8)
    prediction = segmenter.predict(image)
    assert prediction.anomaly.shape == (90, 150) and np.isfinite(prediction.anomaly).all()

    rows = _rows(out / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    assert all(float(r["loss"]) > 0 and float(r["corocl_fraction"]) == 1.0 for r in rows)
    assert float(rows[1]["lr"]) == 0.0  # poly decay reaches 0 at the last iteration
    validation = _rows(out / "validation.csv")
    assert [int(r["iteration"]) for r in validation] == [2, 4]
    rule = best_of([{k: float(v) for k, v in r.items() if v} for r in validation])
    assert float(validation[-1]["best_ap"]) == rule["ap"] == pytest.approx(result.best_ap)
    kept = sorted(p.name for p in (out / KEPT_CHECKPOINTS).iterdir())
    assert kept == ["iteration_000002.safetensors", "iteration_000004.safetensors"]  # every validation's model
    best_file = out / KEPT_CHECKPOINTS / f"iteration_{int(rule['iteration']):06d}.safetensors"
    assert (out / "best.safetensors").read_bytes() == best_file.read_bytes()
    assert training["metrics"]["val_ap"] == pytest.approx(float(validation[-1]["ap"]))  # the latest validation
    assert training["metrics"]["loss"] == pytest.approx(float(rows[-1]["loss"]))
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg
    assert "tensorboard is not installed" in (out / "train.log").read_text() or (out / "tensorboard").is_dir()


def test_segmenter_stays_bit_identical(uninterrupted):
    cfg, result = uninterrupted
    source, _ = load_model(DEFAULT_CHECKPOINT)
    trained, _ = load_model(result.last_checkpoint)
    source_state, trained_state = source.closed_set.state_dict(), trained.closed_set.state_dict()
    assert source_state.keys() == trained_state.keys()
    for key in source_state:  # weights and BatchNorm running statistics
        assert torch.equal(source_state[key], trained_state[key]), key
    x = torch.randn(2, 3, *CROP_HW, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(source(x).closed, trained(x).closed)
    torch.manual_seed(cfg["seed"])
    fresh, _, _ = build_network(cfg["model"])
    assert not torch.equal(fresh.branch.residual.weight, trained.branch.residual.weight)  # the branch did train


def test_resume_continues_identically(uninterrupted, tiny_data, tmp_path):
    reference_cfg, _ = uninterrupted
    out = tmp_path / "resumed"
    # the stream does not depend on the workers (bit for bit: the frozen pass stays in the model here;
    # in the loader it is ONNX Runtime's, equal up to rounding: test_training_frozen.py)
    cfg = _run_config(tiny_data, out, "data.num_workers=2", "train.frozen.where=model")
    first = train(cfg, stop_after=2)
    assert first.interrupted and first.iteration == 2 and _state(out)["iteration"] == 2
    second = train(cfg, resume=True)
    assert second.iteration == 4 and not second.interrupted
    reference_out = Path(reference_cfg["output_dir"])
    _assert_same_state(_state(reference_out), _state(out))
    assert _rows(out / "metrics.csv") == _rows(reference_out / "metrics.csv")
    assert _rows(out / "validation.csv") == _rows(reference_out / "validation.csv")


def test_a_resumed_slice_keeps_the_validation_calibration_and_best(tiny_data, tmp_path):
    """A slice that ends between validations writes the same model file as an unbroken run would:
    calibrated on the last validation (restored from train_state.pt), not on a training batch."""
    out = tmp_path / "slices"
    cfg = _run_config(tiny_data, out, "train.checkpoint_every=1")
    train(cfg, stop_after=1)  # stopped before any validation
    assert _state(out)["best"] is None and _state(out)["calibration"]["source"].startswith("pasted objects")
    train(cfg, resume=True, stop_after=1)  # validated at 2
    _, first_meta = load_model(out / "last.safetensors")
    state = _state(out)
    assert state["calibration"]["source"].startswith("validation set") and "ap" in state["val_metrics"]
    assert set(state["best"]) == {"ap", "fpr95", "iteration"} and state["best"]["iteration"] == 2
    resumed = train(cfg, resume=True, stop_after=1)  # iteration 3: saved, not validated
    assert resumed.iteration == 3 and resumed.best_ap == state["best"]["ap"]
    _, meta = load_model(out / "last.safetensors")
    training = meta.provenance["training"]
    assert training["iterations"] == 3 and "validation set" in training["calibration"]
    assert meta.display_range["rpl_energy"] == first_meta.display_range["rpl_energy"]
    assert training["metrics"]["val_ap"] == state["val_metrics"]["ap"]
    # a state of older code (no FPR95 with the best): the resumed run reads it from validation.csv
    old = _state(out)
    fpr95 = old["best"].pop("fpr95")
    torch.save(old, out / STATE_FILE)
    train(cfg, resume=True, stop_after=1)  # iteration 4: validated; the best is compared with a known FPR95
    best = _state(out)["best"]
    assert best["fpr95"] == (fpr95 if best["iteration"] == 2 else float(_rows(out / "validation.csv")[-1]["fpr95"]))


def test_ctrl_c_saves_and_resume_matches(uninterrupted, tiny_data, tmp_path, monkeypatch, caplog):
    reference_cfg, _ = uninterrupted
    out = tmp_path / "interrupted"
    cfg = _run_config(tiny_data, out)
    read = training_datasets.CityscapesInliers.read
    calls = {"n": 0}

    def read_then_ctrl_c(self, index):
        calls["n"] += 1
        if calls["n"] == 5:  # first image of iteration 2 (batch 2)
            signal.raise_signal(signal.SIGINT)
        return read(self, index)

    monkeypatch.setattr(training_datasets.CityscapesInliers, "read", read_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    stopped = train(cfg)
    assert stopped.interrupted and stopped.iteration == 2
    assert "SIGINT received: stopping after this iteration" in caplog.text
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    monkeypatch.setattr(training_datasets.CityscapesInliers, "read", read)
    resumed = train(cfg, resume=True)
    assert resumed.iteration == 4
    _assert_same_state(_state(Path(reference_cfg["output_dir"])), _state(out))



def test_a_time_budget_stops_at_an_iteration_boundary_saves_and_resume_matches(uninterrupted, tiny_data, tmp_path,
                                                                              monkeypatch, caplog):
    """--time-budget: the clock passes the deadline during iteration 2 → the run stops after it, saves,
    and the resumed run ends in the uninterrupted run's state."""
    import time
    import types

    from rpl_training import utils as training_utils

    reference_cfg, _ = uninterrupted
    out = tmp_path / "budget"
    cfg = _run_config(tiny_data, out)
    read, late = training_datasets.CityscapesInliers.read, {"by": 0.0}
    clock = types.SimpleNamespace(monotonic=lambda: time.monotonic() + late["by"])
    calls = {"n": 0}

    def read_then_time_passes(self, index):
        calls["n"] += 1
        if calls["n"] == 5:  # first image of iteration 2 (batch 2): the budget is spent from here on
            late["by"] = 10_000.0
        return read(self, index)

    monkeypatch.setattr(training_utils, "time", clock)
    monkeypatch.setattr(training_datasets.CityscapesInliers, "read", read_then_time_passes)
    stopped = train(cfg, time_budget_s=3600)
    assert stopped.interrupted and stopped.iteration == 2
    assert "stopped at iteration 2/4" in caplog.text
    assert _state(out)["iteration"] == 2 and len(_rows(out / "metrics.csv")) >= 1
    monkeypatch.setattr(training_datasets.CityscapesInliers, "read", read)
    late["by"] = 0.0
    resumed = train(cfg, resume=True, time_budget_s=3600)
    assert resumed.iteration == 4 and not resumed.interrupted
    _assert_same_state(_state(Path(reference_cfg["output_dir"])), _state(out))


def test_unreadable_inlier_files_are_warned_once_and_counted(tiny_data, tmp_path, caplog):
    import shutil

    root = tmp_path / "cityscapes"
    shutil.copytree(tiny_data["cityscapes"], root)
    bad = sorted(root.glob("leftImg8bit/train/*/*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    cfg = small_config(tiny_data, tmp_path / "run", f"data.inlier.root={root}", "train.iterations=4",
                       "train.log_every=4")
    train(cfg)
    assert caplog.text.count(f"skipping unreadable file: {bad}") == 1
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert int(rows[-1]["skipped_reads"]) == 2  # 4 iterations × 2 images = 2 epochs; read twice, warned once


def test_cli_reports_bad_input(tiny_data, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"data": {"inlier": {"root": str(tmp_path / "none")},
                                               "outlier": {"root": str(tmp_path / "none_either")}}}))
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                 "--set", f"validation.root={tmp_path / 'no_anomaly_set'}"]) == 2
    err = capsys.readouterr().err
    assert "inlier data (cityscapes)" in err and "outlier data (coco)" in err and "expected layout" in err
    assert "validation data (auto)" in err and "no_anomaly_set" in err

    config.write_text("train:\n  learning_rate: 0.1\n")
    assert main(["--config", str(config)]) == 2
    assert "unknown config key 'train.learning_rate'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="multiples"):
        train(small_config(tiny_data, tmp_path / "odd", "data.crop_size=[60, 128]"))


def test_refuses_to_overwrite_a_run(uninterrupted):
    cfg, _ = uninterrupted
    with pytest.raises(ConfigError, match="pass --resume"):
        train(cfg)


def test_shipped_configs():
    paper = load_config(CONFIGS / "cityscapes_coco.yaml")
    for section in ("model", "train", "validation", "seed"):
        assert paper[section] == DEFAULTS[section]  # the file spells out the built-in paper recipe
    for key in ("crop_size", "flip_prob", "num_workers"):
        assert paper["data"][key] == DEFAULTS["data"][key]
    assert {k: v for k, v in paper["data"]["outlier"].items() if k != "root"} == \
        {k: v for k, v in DEFAULTS["data"]["outlier"].items() if k != "root"}
    assert paper["train"]["lr"] == 7.5e-5 and paper["train"]["batch_size"] == 8
    cpu = load_config(CONFIGS / "udacity_coco_cpu.yaml")
    assert cpu["data"]["inlier"]["kind"] == "frames" and cpu["data"]["outlier"]["filter"] == "object"
    assert cpu["train"]["device"] == "cpu" and cpu["data"]["crop_size"] == [256, 512]


def test_time_budget_stops_at_an_iteration_boundary(tiny_data, tmp_path, monkeypatch):
    import time as time_module

    from rpl_training.utils import StopRequest

    now = {"t": 100.0}
    monkeypatch.setattr(time_module, "monotonic", lambda: now["t"])
    stop = StopRequest(deadline=105.0)
    assert not stop.requested
    now["t"] = 105.0
    assert stop.requested
    monkeypatch.undo()

    out = tmp_path / "budget"
    result = train(_run_config(tiny_data, out), time_budget_s=0.0)  # spent before the first iteration
    assert result.interrupted and result.iteration == 0 and not (out / STATE_FILE).exists()
    assert main(["--config", str(out / "config.yaml"), "--time-budget", "0"]) == 0  # a planned stop: exit 0
