"""Training on several inlier sources: weighted epochs, IDD with void labels, per-source resolution,
several COCO folders; the faster training forward; validation on a suite of sets."""

import numpy as np
import pytest
import torch

from rpl_training.config import ConfigError, inlier_sources, load_config
from rpl_training.datasets import FrameInliers, IDDInliers, VoidLabels
from rpl_training.model import RPLTrainingModel, build_network, forward_losses
from rpl_training.sample_stream import ConcatSources, IterationBatchSampler, build_dataset, build_outliers, collate
from rpl_training.validation import ValidationSets, validate
from rpl_training_testdata import (
    SCENE_HW,
    make_anomaly_set,
    make_frames,
    make_small_coco,
    scene,
    small_config,
    write_coco,
    write_gray,
    write_rgb,
)

MEAN = (0.485, 0.456, 0.406)


def make_idd(root, per_split=3, seed=4):
    """leftImg8bit/SPLIT/SEQ/N_image.jpg + gtFine/SPLIT/SEQ/N_label.png; a test split without labels."""
    rng = np.random.default_rng(seed)
    h, w = SCENE_HW
    for split in ("train", "val", "test"):
        for i in range(per_split):
            write_rgb(root / "leftImg8bit" / split / "7" / f"{i:06d}_image.jpg", scene(rng))
            if split != "test":
                label = np.zeros((h, w), np.uint8)
                label[: h // 2] = 6  # sky
                label[h // 2:, : w // 2] = 2  # living things
                write_gray(root / "gtFine" / split / "7" / f"{i:06d}_label.png", label)
    return root


def _mixed_config(tiny_data, tmp_path, idd_root, *overrides):
    base = small_config(tiny_data, tmp_path / "run")
    cfg = dict(base)
    cfg["data"] = dict(base["data"], inlier=[
        {"kind": "frames", "root": str(tiny_data["frames"]), "resize": None, "weight": 1.0},
        {"kind": "idd", "root": str(idd_root), "split": ["train", "val"], "resize": [80, 48], "weight": 3.0,
         "void_labels": [2], "object_scale": 0.5}])
    return load_config(None, overrides, **{k: v for k, v in cfg.items()})


def test_idd_reader_pairs_labelled_frames_and_voids_living_things(tmp_path):
    root = make_idd(tmp_path / "idd")
    idd = IDDInliers(root, ["train", "val"])
    assert len(idd) == 6  # the unlabelled test split is left out
    image, label = VoidLabels(idd, [2]).read(0)
    h, w = SCENE_HW
    assert image.shape == (h, w, 3) and label[0, 0] == 6
    assert (label[h // 2:, : w // 2] == 255).all() and (label[h // 2:, w // 2:] == 0).all()
    with pytest.raises(Exception, match=r"missing folder gtFine/test/"):
        IDDInliers(root, ["test"])


def test_frames_include_patterns_leave_other_folders_out(tmp_path):
    root = make_frames(tmp_path / "camvid", count=2)
    write_gray(root / "driveannot" / "frame000.png", np.zeros(SCENE_HW, np.uint8))  # a label folder
    assert len(FrameInliers(root)) == 3
    assert len(FrameInliers(root, include=["drive/*.jpg"])) == 2


def test_config_takes_a_list_of_inlier_sources(tiny_data, tmp_path):
    cfg = _mixed_config(tiny_data, tmp_path, make_idd(tmp_path / "idd"))
    sources = inlier_sources(cfg["data"])
    assert [s["kind"] for s in sources] == ["frames", "idd"]
    assert sources[1]["void_labels"] == [2] and sources[0]["video_stride"] == 1  # defaults filled per source
    with pytest.raises(ConfigError, match=r"unknown config key 'data.inlier\[0\].wieght'"):
        load_config(None, [], data={"inlier": [{"kind": "frames", "root": "x", "wieght": 2}]})
    with pytest.raises(ConfigError, match=r"data.inlier\[1\].weight must be a positive number"):
        load_config(None, [], data={"inlier": [{"kind": "frames", "root": "x"},
                                               {"kind": "frames", "root": "y", "weight": 0}],
                                    "outlier": {"root": "z"}})
    with pytest.raises(ConfigError, match="override one with a whole list"):
        load_config(None, ["data.inlier.root=q"], data={"inlier": [{"kind": "frames", "root": "x"}]})


def test_weighted_epochs_give_each_source_its_share():
    sources = [range(0, 10), range(10, 40)]  # 10 and 30 images, weights 3 : 1
    sampler = IterationBatchSampler(40, 4, total=30, seed=1, sources=sources, weights=[3.0, 1.0])
    for epoch in (0, 1):
        order = sampler.permutation(epoch)
        assert len(order) == 40
        assert (order < 10).sum() == 30 and (order >= 10).sum() == 10
        counts = np.bincount(order[order < 10], minlength=10)
        assert counts.min() == 3 and counts.max() == 3  # the small source repeated evenly
        assert len(set(order[order >= 10].tolist())) == 10  # the large one sampled without repeats
    assert not np.array_equal(sampler.permutation(0), sampler.permutation(1))
    again = IterationBatchSampler(40, 4, total=30, seed=1, sources=sources, weights=[3.0, 1.0])
    assert np.array_equal(again.permutation(1), sampler.permutation(1))
    # one source: the plain permutation of every image, as before
    plain = IterationBatchSampler(40, 4, total=30, seed=1)
    assert np.array_equal(plain.permutation(0), np.random.default_rng([1, 0]).permutation(40))


def test_mixed_dataset_uses_each_sources_resolution_and_labels(tiny_data, tmp_path):
    cfg = _mixed_config(tiny_data, tmp_path, make_idd(tmp_path / "idd"))
    dataset = build_dataset(cfg["data"], MEAN, 0)
    assert isinstance(dataset.inliers, ConcatSources) and len(dataset) == 4 + 6
    assert [t.inlier_size for t in dataset.transforms] == [None, (80, 48)]
    assert [t.relative_scale for t in dataset.transforms] == [1.0, 0.5]
    idd_sample = dataset[(0, 0, 4)]  # index 4: the first IDD frame
    label = idd_sample["label"]
    assert label.shape == tuple(cfg["data"]["crop_size"])
    # 80×48 scene in a 64×128 crop: padded with void; living things are void too, sky (6) stays inlier
    assert (label == 6).any() and (label == 255).mean() > 0.5 and not (label == 2).any()


def test_several_coco_folders_and_splits_without_duplicates(tmp_path):
    a = make_small_coco(tmp_path / "a")
    b = make_small_coco(tmp_path / "b")  # the same three file names
    write_coco(a, [{"id": 9, "file_name": "000000000009.jpg", "height": 64, "width": 96}],
               [{"image_id": 9, "category_id": 18, "segmentation": [[5, 5, 40, 5, 40, 40, 5, 40]]}], split="val2017")
    cfg = load_config(None, [], data={"inlier": {"root": "x"}, "outlier": {
        "root": [str(a), str(b)], "split": "all", "filter": "object", "min_size": 32, "max_images": None}})
    outliers = build_outliers(cfg["data"]["outlier"], 0)
    assert len(outliers) == 4  # a/train2017 (3) + a/val2017 (1); b repeats a's file names
    names = sorted(outliers.describe(i).split("/")[-1] for i in range(len(outliers)))
    assert names == ["000000000001.jpg", "000000000002.jpg", "000000000003.jpg", "000000000009.jpg"]
    image, mask = outliers.read(3)
    assert image.shape == (64, 96, 3) and (mask == 254).any()


def test_training_forward_equals_the_whole_network_on_the_joint_batch(tiny_data, tmp_path):
    """Context images skip the decoder and heads; the losses and gradients are those of forwarding
    mixed and context images together through the whole network (the official code's way)."""
    cfg = small_config(tiny_data, tmp_path / "run")
    torch.manual_seed(0)
    network, projector, meta = build_network(cfg["model"])
    dataset = build_dataset(cfg["data"], MEAN, 0)
    batch = collate([dataset[k] for k in IterationBatchSampler(len(dataset), 2, 1, seed=0).keys(0)])
    batch.pop("skipped")
    model = RPLTrainingModel(network, projector, meta.mean, meta.std, num_inlier=meta.num_inlier).train()
    loss, terms = forward_losses(model, batch, use_corocl=True, train_cfg=cfg["train"],
                                 generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad.clone() for p in network.branch.parameters()]

    # the reference: everything through the full RPLNetwork in one batch
    from rpl_training.losses import corocl_loss, rpl_losses
    for p in network.branch.parameters():
        p.grad = None
    x = model.frozen.closed_set.normalise(torch.cat([batch["image"], batch["context"]]))
    out = network(x)
    projected = torch.nn.functional.interpolate(projector(out.embedding), (32, 64), mode="bilinear",
                                                align_corners=True)
    reference = rpl_losses(out.rpl[:2, :19], out.closed[:2, :19], batch["label"].long())
    contrastive = corocl_loss(projected[:2], batch["label"].long(), projected[2:], batch["context_label"].long(),
                              max_views=64, generator=torch.Generator().manual_seed(0))
    (reference["total"] + contrastive).backward()
    assert terms["total"].item() == pytest.approx(reference["total"].item(), rel=1e-5)
    assert terms["corocl"].item() == pytest.approx(contrastive.item(), rel=1e-5)
    for mine, theirs in zip(grads, (p.grad for p in network.branch.parameters())):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_compile_option_compiles_only_the_frozen_pass(tiny_data, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append((type(fn).__name__, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    network, projector, meta = build_network(small_config(tiny_data, tmp_path / "run")["model"])
    RPLTrainingModel(network, projector, meta.mean, meta.std, num_inlier=meta.num_inlier, compile_frozen=True)
    assert compiled == [("FrozenClosedSet", {"dynamic": False}), ("FrozenEncoder", {"dynamic": False})]
    compiled.clear()
    RPLTrainingModel(network, projector, meta.mean, meta.std, num_inlier=meta.num_inlier)
    assert compiled == []


def test_validation_on_a_suite_logs_each_set_and_the_mean(tiny_data, tmp_path):
    from rpl_perception.eval.datasets import open_dataset

    network, _, meta = build_network(small_config(tiny_data, tmp_path / "run")["model"])
    other = make_anomaly_set(tmp_path / "other", count=2, seed=9)
    sets = ValidationSets([("First set", open_dataset("folders", tiny_data["anomaly"])),
                           ("Second set", open_dataset("folders", other))], suite=True)
    assert sets.fields == ("iteration", "ap", "fpr95", "auroc", "best_ap", "first_set_ap", "first_set_fpr95",
                           "second_set_ap", "second_set_fpr95")
    metrics, (display, threshold) = validate(network, meta, sets, device=torch.device("cpu"),
                                             network_size=(128, 64), show_progress=False)
    assert metrics["ap"] == pytest.approx((metrics["first_set_ap"] + metrics["second_set_ap"]) / 2)
    assert metrics["fpr95"] == pytest.approx((metrics["first_set_fpr95"] + metrics["second_set_fpr95"]) / 2)
    assert display[0] < display[1] and display[0] <= threshold <= display[1]
    single, _ = validate(network, meta, open_dataset("folders", other), device=torch.device("cpu"),
                         network_size=(128, 64), show_progress=False)
    assert set(single) == {"ap", "fpr95", "auroc"} and single["ap"] == pytest.approx(metrics["second_set_ap"])
