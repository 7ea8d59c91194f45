#!/usr/bin/env python3
"""How the drivable corridor changes pixel AP / FPR95 of the model's score, on every set of a suite.

One network pass per image; then the score as it is, restricted to corridors of several class sets
(hard: outside gets the frame's minimum) and with soft priors (lowered by ``penalty`` × the display
range's span, reached ``falloff`` × the image height away from the road + sidewalk corridor). Prints a
Markdown table (AP / FPR95 in %) per variant and set, and the means over the sets.

    python scripts/corridor_study.py --suite scripts/dev_suite.yaml
"""

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from rpl_perception.corridor import CorridorSettings, corridor_prior, drivable_corridor, restrict_to_corridor
from rpl_perception.eval.datasets import open_dataset
from rpl_perception.eval.metrics import PixelMetricAccumulator
from rpl_perception.eval.offline import MultiScorePredictor
from rpl_perception.eval.suite import load_suite
from rpl_perception.segmenter import AnomalySegmenter

HARD = {"road": ("road",), "road+sidewalk": ("road", "sidewalk"), "road+sidewalk+terrain": ("road", "sidewalk", "terrain")}
SOFT = [(1.0, 0.1), (0.5, 0.1), (0.5, 0.25), (0.25, 0.25)]  # (penalty × span, falloff × height)


def variants(score, labels, span, classes):
    out = {"score": score}
    corridors = {name: drivable_corridor(labels, CorridorSettings(classes=names), classes) for name, names in HARD.items()}
    for name, corridor in corridors.items():
        out[f"hard {name}"] = restrict_to_corridor(score, corridor)
    for penalty, falloff in SOFT:
        out[f"soft {penalty:g}×span, {falloff:g}×H"] = corridor_prior(score, corridors["road+sidewalk"],
                                                                    penalty * span, falloff)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=Path(__file__).with_name("dev_suite.yaml"))
    args = parser.parse_args(argv)
    segmenter = AnomalySegmenter.from_pretrained()
    predictor = MultiScorePredictor(segmenter, [segmenter.score])
    low, high = segmenter.display_range
    results = {}
    for entry in load_suite(args.suite):
        dataset = open_dataset(entry.kind, entry.root)
        accumulators = {}
        for sample in tqdm(dataset, total=len(dataset), desc=entry.name, unit="img"):
            labels, maps = predictor.predict_batch([sample.image], [sample.label.shape[::-1]])[0]
            for name, score in variants(maps[segmenter.score], labels, high - low, segmenter.class_names).items():
                accumulators.setdefault(name, PixelMetricAccumulator()).update(score, sample.label)
        results[entry.name] = {name: acc.compute() for name, acc in accumulators.items()}
    names = list(results)
    print(f"\n{segmenter.score} of the default model, AP / FPR95 in %\n")
    print("| variant | " + " | ".join(names) + " | mean AP | mean FPR95 |")
    print("|---|" + "---:|" * (len(names) + 2))
    for variant in results[names[0]]:
        cells = [results[n][variant] for n in names]
        mean_ap = sum(c["ap"] for c in cells) / len(cells)
        mean_fpr = sum(c["fpr95"] for c in cells) / len(cells)
        print(f"| {variant} | " + " | ".join(f"{100 * c['ap']:.1f} / {100 * c['fpr95']:.1f}" for c in cells)
              + f" | {100 * mean_ap:.1f} | {100 * mean_fpr:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
