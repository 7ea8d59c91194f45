#!/usr/bin/env python3
"""Arms of an ablation, each a set of ``rpl-train`` runs (seeds): every run's chosen validation (the
row of ``validation.csv`` that the trainer made ``best.safetensors``, by ``rpl_training.selection``:
the rule of docs/selection_rule.md; the final iteration beside it), each arm's mean and standard
deviation over its runs — the suite mean, the mean of the three real-photo sets and each set — and each
arm's difference from the first with the standard error of that difference (Student's pooled seed
variance). A run whose last validation is before its configured end is marked unfinished.
AP / FPR95 in %.

    python scripts/compare_runs.py "without=runs/abl_none_s666" "on road=runs/abl_road_s666,runs/abl_road_s2024"
"""

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Optional

import yaml

from rpl_training.selection import best_of
from rpl_training.utils import read_log

#: validation.csv column prefixes of the development suite's sets, in the order of scripts/dev_suite.yaml
SETS = {"roadanomaly_dev": "RoadAnomaly dev", "smiyc_roadanomaly21_val": "RoadAnomaly21",
        "smiyc_roadobstacle21_val": "RoadObstacle21", "fishyscapes_static_val": "FS Static"}
COLUMNS = ["ap", "fpr95"] + [f"{key}_{metric}" for key in SETS for metric in ("ap", "fpr95")]


#: the sets of real photographs (Fishyscapes Static pastes objects into Cityscapes frames); their mean
#: decides the short-schedule comparison of docs/selection_rule.md
REAL_PHOTO = ["roadanomaly_dev", "smiyc_roadanomaly21_val", "smiyc_roadobstacle21_val"]


def real_photo_mean(row) -> float:
    return statistics.mean(row[f"{key}_ap"] for key in REAL_PHOTO)


def standard_error(reference, other) -> Optional[float]:
    """Standard error of the difference of two arms' means, from the pooled seed variance (Student's:
    each arm's squared deviations from its own mean over n1 + n2 − 2 degrees of freedom; an arm of one
    seed adds none); None when neither arm has two seeds."""
    freedom = len(reference) + len(other) - 2
    if freedom < 1:
        return None
    squares = sum((v - statistics.mean(seeds)) ** 2 for seeds in (reference, other) for v in seeds)
    return math.sqrt(squares / freedom * (1 / len(reference) + 1 / len(other)))


def difference(reference, other) -> str:
    """Mean of ``other`` minus mean of ``reference``, with :func:`standard_error`."""
    text = f"{statistics.mean(other) - statistics.mean(reference):+.1f}"
    se = standard_error(reference, other)
    if se is None:
        return text + " (no SE: one seed per arm)"
    one_arm = " from one arm's spread" if min(len(reference), len(other)) == 1 else ""
    return text + f" (SE {se:.1f}{one_arm})"


def chosen_and_final(run: Path):
    """(chosen row, final row) of a run's validations, as {column: value}."""
    rows = read_log(run / "validation.csv")
    if not rows:
        raise SystemExit(f"{run}: no validation yet")
    return best_of(rows), rows[-1]


def unfinished(run: Path, final) -> str:
    """" (unfinished: N of M)" where the run's last validation is before its configured end, else ""."""
    config = run / "config.yaml"
    total = yaml.safe_load(config.read_text())["train"]["iterations"] if config.is_file() else None
    done = int(final["iteration"])
    return f" (unfinished: {done:,} of {total:,})" if total is not None and done < total else ""


def cells(row) -> str:
    pairs = [("ap", "fpr95")] + [(f"{key}_ap", f"{key}_fpr95") for key in SETS]
    return " | ".join(f"{100 * row[a]:.1f} / {100 * row[f]:.1f}" for a, f in pairs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arms", nargs="+", help="NAME=RUN[,RUN...]: the runs (seeds) of one arm")
    args = parser.parse_args(argv)
    arms = {}
    for spec in args.arms:
        name, _, runs = spec.partition("=")
        arms[name] = [Path(run) for run in runs.split(",") if run]
    header = "mean | " + " | ".join(SETS.values())
    print(f"| run (AP / FPR95) | iteration | {header} |")
    print("|---|---:|" + "---:|" * (1 + len(SETS)))
    chosen = {}
    for name, runs in arms.items():
        chosen[name] = []
        for run in runs:
            best, final = chosen_and_final(run)
            chosen[name].append(best)
            print(f"| {name}: {run.name}{unfinished(run, final)} (chosen) | {int(best['iteration'])} | {cells(best)} |")
            if final is not best:
                print(f"| {name}: {run.name} (final) | {int(final['iteration'])} | {cells(final)} |")
    metrics = {"mean AP": lambda row: row["ap"], "real-photo mean": real_photo_mean}
    metrics.update({name: (lambda row, key=key: row[f"{key}_ap"]) for key, name in SETS.items()})
    values = {name: {metric: [100 * get(row) for row in rows] for metric, get in metrics.items()}
              for name, rows in chosen.items()}
    print("\n| arm (AP, mean ± sd over seeds, chosen checkpoints) | seeds | " + " | ".join(metrics) + " |")
    print("|---|---:|" + "---:|" * len(metrics))
    for name, per_metric in values.items():
        parts = []
        for seeds in per_metric.values():
            sd = f" ± {statistics.stdev(seeds):.1f}" if len(seeds) > 1 else ""  # one seed: no spread
            parts.append(f"{statistics.mean(seeds):.1f}{sd}")
        print(f"| {name} | {len(chosen[name])} | " + " | ".join(parts) + " |")
    names = list(chosen)
    if len(names) > 1:
        print(f"\n| difference from {names[0]} (AP; standard error from the pooled seed variance) | "
              + " | ".join(metrics) + " |")
        print("|---|" + "---:|" * len(metrics))
    for name in names[1:]:
        parts = [difference(values[names[0]][metric], values[name][metric]) for metric in metrics]
        print(f"| {name} − {names[0]} | " + " | ".join(parts) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
