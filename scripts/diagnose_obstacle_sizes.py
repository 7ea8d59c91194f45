#!/usr/bin/env python3
"""Which anomalies a score finds, by their size: per labelled anomaly (8-connected component of the
anomaly label), the share of its pixels that score above the set's operating point, binned by the
component's area, for one or more model files side by side.

The operating point is model- and set-specific and label-defined, so models compare fairly: the score
at which ``--fpr`` (default 5 %) of the set's normal pixels are flagged (the FPR of the calibrated
``anomaly_threshold``, measured on this set instead of the calibration sets). A component counts as
found when at least half of its pixels are above it. Areas are in pixels of the label (RoadObstacle21:
1920×1080 frames); the closed-set energy of the first model is given beside the models' own score.

    python scripts/diagnose_obstacle_sizes.py --suite scripts/dev_suite.yaml --set "SMIYC RoadObstacle21 val" \
        --model 800=old.safetensors --model shipped=rpl_perception/weights/espnetv2_cityscapes.safetensors
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from rpl_perception.eval.datasets import open_dataset
from rpl_perception.eval.offline import MultiScorePredictor
from rpl_perception.eval.suite import suite_set
from rpl_perception.segmenter import AnomalySegmenter

NORMAL, ANOMALY = 0, 1
#: component areas (label pixels) that bound the bins: < 1,000 | 1,000–4,000 | 4,000–16,000 | ≥ 16,000
AREA_EDGES = (1_000, 4_000, 16_000)


def component_scores(score: np.ndarray, label: np.ndarray):
    """(area, pixel scores) of every 8-connected anomaly component of one frame."""
    count, ids, stats, _ = cv2.connectedComponentsWithStats((label == ANOMALY).view(np.uint8), connectivity=8)
    return [(int(stats[k, cv2.CC_STAT_AREA]), score[ids == k]) for k in range(1, count)]


def collect(predictor, dataset, stride: int = 4):
    """{score: (sampled normal pixel scores, [(area, component pixel scores)])} over the set's frames."""
    normal = {name: [] for name in predictor.scores}
    components = {name: [] for name in predictor.scores}
    for index in tqdm(range(len(dataset)), desc=dataset.kind, unit="img", leave=False):
        sample = dataset[index]
        _, maps = predictor.predict_batch([sample.image], [sample.label.shape[::-1]])[0]
        is_normal = sample.label[::stride, ::stride] == NORMAL
        for name in predictor.scores:
            normal[name].append(maps[name][::stride, ::stride][is_normal])
            components[name].extend(component_scores(maps[name], sample.label))
    return {name: (np.concatenate(normal[name]), components[name]) for name in predictor.scores}


def size_table(rows, fpr: float) -> str:
    """rows: (name, normal scores, components) → markdown: found / all anomalies and the median share of
    their pixels above the threshold, per area bin."""
    edges = (0,) + AREA_EDGES + (np.inf,)
    bins = [f"{lo:,}–{hi:,} px" if np.isfinite(hi) else f"≥ {lo:,} px" for lo, hi in zip(edges[:-1], edges[1:])]
    lines = ["| score | " + " | ".join(bins) + " | all |", "|---|" + "---:|" * (len(bins) + 1)]
    for name, normal, components in rows:
        threshold = np.quantile(normal, 1.0 - fpr)
        areas = np.array([area for area, _ in components])
        shares = np.array([float((pixels > threshold).mean()) for _, pixels in components])
        cells = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = (areas >= lo) & (areas < hi)
            cells.append(f"{int((shares[inside] >= 0.5).sum())} / {int(inside.sum())} "
                         f"(median {100 * np.median(shares[inside]):.0f} %)" if inside.any() else "–")
        cells.append(f"{int((shares >= 0.5).sum())} / {len(shares)} (median {100 * np.median(shares):.0f} %)"
                     if len(shares) else "no anomaly")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, required=True)
    parser.add_argument("--set", dest="set_name", required=True, help="the suite entry's name")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FILE",
                        help="a model file to compare (repeatable); its default score is used")
    parser.add_argument("--fpr", type=float, default=0.05, help="share of normal pixels flagged (operating point)")
    parser.add_argument("--stride", type=int, default=4, help="normal pixels sampled every N rows/columns")
    args = parser.parse_args(argv)
    try:
        entry = suite_set(args.suite, args.set_name)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    dataset = open_dataset(entry.kind, entry.root)
    rows = []
    for index, spec in enumerate(args.model):
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).stem, "", spec)
        segmenter = AnomalySegmenter.from_checkpoint(path)
        scores = [segmenter.score] + (["energy"] if index == 0 and segmenter.score != "energy" else [])
        collected = collect(MultiScorePredictor(segmenter, scores), dataset, args.stride)
        rows.extend((f"{name}: {score}", *collected[score]) for score in scores)
    print(f"### {args.set_name}: anomalies found (≥ half of their pixels above the score at "
          f"{100 * args.fpr:g} % FPR on the set's normal pixels), by area\n")
    print(size_table(rows, args.fpr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
