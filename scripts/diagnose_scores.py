#!/usr/bin/env python3
"""Where an anomaly score goes wrong, by closed-set class: which normal pixels score high, which
anomaly pixels score low.

For each set of a suite and each score, the threshold that detects 95 % of the anomaly pixels (the
FPR95 operating point) is found; the normal pixels above it are the false positives. Per
predicted closed-set class (the frozen closed-set network's argmax) the table gives the class's share of
the normal pixels, the fraction of them above the threshold (the class's own FPR at 95 % TPR) and
its share of all false positives; anomaly pixels are broken down by the class the segmenter gave
them. Pixels are sampled on a grid (every ``--stride``-th row and column of the label).

    python scripts/diagnose_scores.py --suite scripts/dev_suite.yaml --model MODEL --scores energy,rpl_energy
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT
from rpl_perception.eval.datasets import open_dataset
from rpl_perception.eval.offline import MultiScorePredictor
from rpl_perception.eval.suite import load_suite
from rpl_perception.segmenter import AnomalySegmenter


def collect(predictor, dataset, stride):
    """Sampled (predicted class, score per name, truth) of every labelled pixel of the set."""
    classes, truth, scores = [], [], {name: [] for name in predictor.scores}
    for index in tqdm(range(len(dataset)), desc=dataset.kind, unit="img", leave=False):
        sample = dataset[index]
        labels, maps = predictor.predict_batch([sample.image], [sample.label.shape[::-1]])[0]
        keep = np.isin(sample.label[::stride, ::stride], (0, 1))
        truth.append(sample.label[::stride, ::stride][keep])
        classes.append(labels[::stride, ::stride][keep])
        for name in predictor.scores:
            scores[name].append(maps[name][::stride, ::stride][keep])
    return (np.concatenate(classes), {n: np.concatenate(v) for n, v in scores.items()}, np.concatenate(truth))


def class_table(classes, score, truth, class_names):
    normal, anomaly = truth == 0, truth == 1
    threshold = np.quantile(score[anomaly], 0.05)  # 95 % of the anomaly pixels score above it
    false_pos = normal & (score >= threshold)
    rows = []
    for c, name in enumerate(class_names):
        of_class = classes == c
        n_normal = int((normal & of_class).sum())
        n_anomaly = int((anomaly & of_class).sum())
        if n_normal + n_anomaly == 0:
            continue
        rows.append((name, n_normal / normal.sum(), (false_pos & of_class).sum() / max(n_normal, 1),
                     (false_pos & of_class).sum() / max(false_pos.sum(), 1), n_anomaly / anomaly.sum(),
                     float(np.median(score[anomaly & of_class])) if n_anomaly else float("nan")))
    rows.sort(key=lambda r: -r[3])
    fpr = false_pos.sum() / normal.sum()
    lines = [f"threshold {threshold:.3f} (95 % TPR), FPR {100 * fpr:.1f} %; median score: normal "
             f"{np.median(score[normal]):.3f}, anomaly {np.median(score[anomaly]):.3f}",
             "| predicted class | share of normal px | its FPR | share of FPs | share of anomaly px | anomaly median |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, share, own_fpr, fp_share, a_share, a_median in rows:
        lines.append(f"| {name} | {100 * share:.1f} | {100 * own_fpr:.1f} | {100 * fp_share:.1f} | "
                     f"{100 * a_share:.1f} | {a_median:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, required=True)
    parser.add_argument("--model", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--scores", default="energy,rpl_energy")
    parser.add_argument("--stride", type=int, default=4, help="label pixels sampled every N rows/columns")
    args = parser.parse_args(argv)
    segmenter = AnomalySegmenter.from_checkpoint(args.model)
    predictor = MultiScorePredictor(segmenter, [s for s in args.scores.split(",") if s])
    for entry in load_suite(args.suite):
        classes, scores, truth = collect(predictor, open_dataset(entry.kind, entry.root), args.stride)
        for name in predictor.scores:
            print(f"\n### {entry.name}: {name}\n")
            print(class_table(classes, scores[name], truth, segmenter.class_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
