"""The embedded default model: ESPNetv2 (Cityscapes) + the RPL branch of the long schedule,
training/rpl_training/configs/mixed_long.yaml (half of the objects on the road), at the iteration the
checkpoint rule chose (docs/rpl_training_long.md)."""

import re

import numpy as np
import pytest

from rpl_perception import AnomalySegmenter
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model, read_checkpoint
from rpl_perception.eval.datasets import open_dataset


def test_default_model_is_one_small_file_with_branch_and_provenance():
    assert DEFAULT_CHECKPOINT.stat().st_size < 5e6
    network, meta = load_model(DEFAULT_CHECKPOINT)
    assert network.has_branch and meta.score == "rpl_energy"
    assert (meta.rpl_design, meta.rpl_width) == ("aspp", 128)
    groups = read_checkpoint(DEFAULT_CHECKPOINT)[1]
    assert groups["rpl"] and not groups["projector"]  # the CoroCL projector is training-only
    training = meta.provenance["training"]
    assert re.fullmatch(r"[0-9a-f]{40}", training["git_commit"])  # a clean tree: the code is that commit's
    assert training["config"]["train"]["iterations"] == 8000 and training["config"]["train"]["corocl"]["enabled"] is False
    assert training["iterations"] == 5000  # the finished run's best validation (docs/selection_rule.md)
    assert training["config"]["data"]["outlier"]["on_road"]["share"] == 0.5  # half of the objects on the road
    assert [source["kind"] for source in training["data"]["inlier"]] == ["frames", "frames", "idd"]
    assert training["data"]["outlier"]["kind"] == "coco"
    # the suite metrics of this very file, every set, the closed-set baselines beside
    summary = meta.provenance["evaluation"]["summary"]
    assert set(summary["rpl_energy"]["sets"]) == set(summary["energy"]["sets"]) == {
        "RoadAnomaly dev", "SMIYC RoadAnomaly21 val", "SMIYC RoadObstacle21 val", "Fishyscapes Static val"}
    assert summary["rpl_energy"]["mean_ap"] == pytest.approx(training["metrics"]["val_ap"], abs=1e-3)  # eval CLI = validation
    assert summary["rpl_energy"]["mean_ap"] > summary["energy"]["mean_ap"] + 0.05
    assert re.fullmatch(r"[0-9a-f]{64}", meta.provenance["rpl_branch"]["sha256"])
    for score in ("rpl_energy", "energy", "max_logit", "max_softmax", "entropy"):
        low, high = meta.display_range[score]
        assert low < meta.anomaly_threshold[score] < high


def test_energy_baseline_stays_selectable():
    sample = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    rpl = AnomalySegmenter.from_pretrained(network_size=(256, 128))
    energy = AnomalySegmenter.from_pretrained(score="energy", network_size=(256, 128))
    assert (rpl.score, energy.score) == ("rpl_energy", "energy")
    a, b = rpl.predict(sample), energy.predict(sample)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.allclose(a.anomaly, b.anomaly)


def test_closed_set_labels_are_bit_identical_to_the_plain_segmenter(roadanomaly_dev):
    """RPL leaves ỹ = head(f) untouched (paper Eq. 3): every label on the 15 dev scenes, at the
    model's 1024×512, equals the segmenter's loaded without any branch."""
    with_branch = AnomalySegmenter.from_pretrained()
    plain_network, meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)
    assert not plain_network.has_branch
    plain = AnomalySegmenter(plain_network, meta)
    for sample in open_dataset("road_anomaly", roadanomaly_dev):
        np.testing.assert_array_equal(with_branch.predict(sample.image).labels, plain.predict(sample.image).labels,
                                      err_msg=sample.name)


def test_shipped_file_measured_again_on_roadanomaly_dev(roadanomaly_dev):
    """The model file's recorded suite metrics are re-measured here, not read back: RoadAnomaly dev
    (15 labelled scenes) at the model's 1024×512 through the evaluation command's own code path,
    the RPL score and the closed-set energy beside it."""
    from rpl_perception.eval.datasets import DATASET_KINDS
    from rpl_perception.eval.frames import frames_from_dataset
    from rpl_perception.eval.offline import evaluate_offline

    segmenter = AnomalySegmenter.from_pretrained()
    dataset = open_dataset("road_anomaly", roadanomaly_dev)
    frames, total = frames_from_dataset(dataset)
    result = evaluate_offline(segmenter, frames, total=total, scores=("rpl_energy", "energy"),
                              component_sizes=DATASET_KINDS[dataset.kind].component_sizes, progress=False)
    recorded = load_model(DEFAULT_CHECKPOINT)[1].provenance["evaluation"]["summary"]
    for score in ("rpl_energy", "energy"):
        measured, written = result.metrics[score], recorded[score]["sets"]["RoadAnomaly dev"]
        assert measured["ap"] == pytest.approx(written["ap"], abs=2e-3), score
        assert measured["fpr95"] == pytest.approx(written["fpr95"], abs=2e-3), score
    rpl, energy = result.metrics["rpl_energy"], result.metrics["energy"]
    assert rpl["ap"] > energy["ap"] + 0.10 and rpl["fpr95"] < energy["fpr95"] - 0.15  # 43.0 / 37.7 vs 23.7 / 58.2
