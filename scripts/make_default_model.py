"""Build the embedded default model file from a segmenter, or from an ``rpl-train`` result.

    # the closed-set network alone (no RPL branch: the anomaly score is the closed-set energy)
    python scripts/make_default_model.py ../shared/models/espnetv2/espnetv2_s_2.0_city_1024x512.pth \
        --calibration ../shared/data/roadanomaly_dev --out /tmp/espnetv2_closed_set.safetensors

    # segmenter + trained RPL branch (what ships; see docs/rpl_training.md): calibrated on the
    # development suite, with the suite's metrics of that model file in its provenance
    python scripts/make_default_model.py runs/mixed_cpu/best.safetensors --calibration scripts/dev_suite.yaml \
        --metrics runs/eval_mixed_cpu/suite.json --out rpl_perception/weights/espnetv2_cityscapes.safetensors

Replacing a model file that records suite metrics is guarded (docs/selection_rule.md): the new model's
``--metrics`` must cover the same sets at the same network sizes, and no set's AP may fall more than
5 AP; otherwise nothing is written unless ``--ignore-guard`` is given (recorded in the provenance).

The output holds the segmenter and, where the input has one, the RPL branch (the CoroCL projector
is training-only and left out), the training provenance (data, config, commit, metrics) of an
``rpl-train`` checkpoint, and per score two display constants measured on the calibration set
(the labelled sets of a suite file, or a RoadAnomaly-style folder: images/ + labels/, 0 normal, 2 anomaly):
- ``display_range``: the 1st and 99th percentile of the score over all pixels, so heatmap colours
  span the scores that occur on real roads and mean the same in every frame;
- ``anomaly_threshold``: the score at which 5 % of the normal pixels are flagged (a sensitive
  operating point for the binary mask, favouring recall over false alarms; users raise it with the
  node's ``anomaly_threshold`` for fewer false alarms).
"""

import argparse
import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from rpl_perception.calibration import calibrate
from rpl_perception.checkpoint import load_model, save_checkpoint
from rpl_perception.eval.datasets import open_dataset
from rpl_perception.eval.offline import MultiScorePredictor, available_scores
from rpl_perception.eval.suite import load_suite
from rpl_perception.image import resize_labels
from rpl_perception.segmenter import AnomalySegmenter

CALIBRATION_STRIDE = 2  # pixel rows / columns: sets of 2048×1024 frames would not fit in memory whole
SEGMENTER = "ESPNetv2 s=2.0 Cityscapes, EdgeNets model zoo (Sachin Mehta), MIT licence"


def calibration_sets(path: Path):
    """The labelled datasets of a suite file (.yaml), or a RoadAnomaly-style folder."""
    if path.suffix in (".yaml", ".yml"):
        return [open_dataset(entry.kind, entry.root) for entry in load_suite(path)]
    return [open_dataset("road_anomaly", path)]


def calibrate_on_sets(segmenter: AnomalySegmenter, datasets, stride: int = CALIBRATION_STRIDE):
    """{score: display range}, {score: threshold} over the pixels of every set at network size
    (every ``stride``-th row and column: sets of 2048×1024 frames would not fit in memory whole)."""
    predictor = MultiScorePredictor(segmenter)
    size = segmenter.network_size
    values = {s: [] for s in predictor.scores}
    labels = []
    for dataset in datasets:
        for sample in tqdm(dataset, desc=f"calibrating on {dataset.root.name}", unit="img"):
            (_, maps), = predictor.predict_batch([sample.image], sizes=[size])
            for s in predictor.scores:
                values[s].append(maps[s][::stride, ::stride].ravel())
            labels.append(resize_labels(sample.label, size)[::stride, ::stride].ravel())
    labels = np.concatenate(labels)
    display, threshold = {}, {}
    for s in predictor.scores:
        display[s], threshold[s] = calibrate(np.concatenate(values[s]), labels)
    return display, threshold


def file_record(path: Path) -> dict:
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def guard(metrics_path: Optional[Path], out: Path, new_score: str) -> None:
    """docs/selection_rule.md's guard, before anything is computed: the model measured in ``metrics_path``
    (a suite.json, its score ``new_score``) replaces the model file ``out`` only if every set ``out``
    records was measured at the same network sizes and none of their APs falls more than 5 AP below."""
    from rpl_training.selection import GUARD_DROP_AP, guard_blockers

    shipped = load_model(out, with_branch=False)[1]
    recorded = shipped.provenance.get("evaluation")
    if not recorded or shipped.score not in recorded.get("summary", {}):
        print(f"guard: {out} records no suite metrics of its score: nothing to compare")
        return
    refuse = f"guard: not replacing {out}"
    override = " (docs/selection_rule.md; --ignore-guard to replace it anyway, and say why)"
    if metrics_path is None:
        raise SystemExit(f"{refuse}: it records suite metrics; give --metrics (the new model's suite.json)" + override)
    report = json.loads(metrics_path.read_text(encoding="utf-8"))
    if report.get("network_sizes") != recorded.get("network_sizes"):
        raise SystemExit(f"{refuse}: {metrics_path} was measured at network sizes {report.get('network_sizes')}, "
                         f"{out} at {recorded.get('network_sizes')}" + override)
    old = recorded["summary"][shipped.score]["sets"]
    new = report["summary"].get(new_score, {}).get("sets", {})
    unmeasured = [name for name in old if name not in new]
    if unmeasured:
        raise SystemExit(f"{refuse}: {metrics_path} has no {new_score} AP on " + ", ".join(unmeasured) + override)
    blockers = guard_blockers({k: v["ap"] for k, v in new.items()}, {k: v["ap"] for k, v in old.items()})
    if blockers:
        raise SystemExit(f"{refuse}: AP would fall more than {100 * GUARD_DROP_AP:g} AP ({shipped.score} → "
                         f"{new_score}) on " + ", ".join(f"{k} ({100 * old[k]['ap']:.1f} → {100 * new[k]['ap']:.1f})"
                                                         for k in blockers) + override)
    print(f"guard: {new_score} on every set of {out} within {100 * GUARD_DROP_AP:g} AP of its {shipped.score} or above")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="segmenter state dict (.pth) or rpl_perception checkpoint "
                                                 "(e.g. rpl-train's last.safetensors)")
    parser.add_argument("--calibration", type=Path, required=True,
                        help="a suite file (e.g. scripts/dev_suite.yaml: every set's pixels) or a RoadAnomaly-style "
                             "folder with images/ and labels/")
    parser.add_argument("--metrics", type=Path, default=None, metavar="SUITE_JSON",
                        help="suite.json of `rpl-perception eval --suite` on the input model: its metrics on every set "
                             "are recorded in the provenance")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ignore-guard", action="store_true",
                        help="replace --out even where a set's AP falls more than 5 AP below the one it records")
    args = parser.parse_args(argv)

    network, meta = load_model(args.model)
    # the score chosen here does not matter: MultiScorePredictor computes every score the model has
    segmenter = AnomalySegmenter(network, meta, score="energy")
    scores = available_scores(segmenter)  # the first is the score the new file ships with
    if args.out.is_file() and not args.ignore_guard:
        guard(args.metrics, args.out, scores[0])
    meta.display_range, meta.anomaly_threshold = calibrate_on_sets(segmenter, calibration_sets(args.calibration))
    meta.score = scores[0]
    provenance = dict(meta.provenance)
    if "training" in provenance:  # rpl-train kept the segmenter's own record; add the branch's file
        provenance["rpl_branch"] = file_record(args.model)
    else:
        record = file_record(args.model)
        provenance.update(segmenter=SEGMENTER, source_file=record["file"], source_sha256=record["sha256"])
    provenance["calibration"] = (f"{args.calibration.name}: display_range = 1st/99th percentile of all pixels, "
                                 "anomaly_threshold = 95th percentile of normal pixels (network input size, every "
                                 f"{CALIBRATION_STRIDE}nd row and column)")
    if args.metrics is not None:
        report = json.loads(args.metrics.read_text(encoding="utf-8"))
        provenance["evaluation"] = {"suite": report["suite"], "network_sizes": report["network_sizes"],
                                    "summary": report["summary"]}
    if args.ignore_guard and args.out.is_file():
        provenance["guard"] = "--ignore-guard: replaced without the 5-AP guard of docs/selection_rule.md"
    meta.provenance = provenance
    save_checkpoint(args.out, meta, network)  # no projector: training-only
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), default score {meta.score}")
    for s in scores:
        print(f"  {s:12s} display {meta.display_range[s][0]:8.3f} .. {meta.display_range[s][1]:8.3f}"
              f"   threshold {meta.anomaly_threshold[s]:8.3f}")


if __name__ == "__main__":
    main()
