"""The embedded default model: ESPNetv2 (Cityscapes) + the RPL branch trained by
training/rpl_training/configs/udacity_coco_cpu.yaml (docs/rpl_training_udacity.md)."""

import re

import numpy as np

from rpl_perception import AnomalySegmenter
from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model, read_checkpoint
from rpl_perception.eval.datasets import open_dataset


def test_default_model_is_one_small_file_with_branch_and_provenance():
    assert DEFAULT_CHECKPOINT.stat().st_size < 5e6
    network, meta = load_model(DEFAULT_CHECKPOINT)
    assert network.has_branch and meta.score == "rpl_energy" and meta.rpl_width == 64
    groups = read_checkpoint(DEFAULT_CHECKPOINT)[1]
    assert groups["rpl"] and not groups["projector"]  # the CoroCL projector is training-only
    training = meta.provenance["training"]
    assert re.fullmatch(r"[0-9a-f]{40}", training["git_commit"])
    assert training["iterations"] == training["config"]["train"]["iterations"] == 1000
    assert training["config"]["train"]["corocl"]["enabled"] is True and training["config"]["seed"] == 666
    assert training["data"]["inlier"]["kind"] == "frames" and training["data"]["outlier"]["kind"] == "coco"
    assert 0.0 < training["metrics"]["val_ap"] < 1.0
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
