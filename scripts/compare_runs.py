#!/usr/bin/env python3
"""Arms of an ablation, each a set of ``rpl-train`` runs (seeds): every run's chosen validation (the
row of ``validation.csv`` that the trainer made ``best.safetensors``, by ``rpl_training.selection``:
the rule of docs/selection_rule.md; the final iteration beside it), each arm's mean and standard
deviation over its runs, and each arm's difference from the first with the standard error of that
difference (from the seeds' spread). AP / FPR95 in %.

    python scripts/compare_runs.py "without=runs/abl_none_s666" "on road=runs/abl_road_s666,runs/abl_road_s2024"
"""

import argparse
import math
import statistics
import sys
from pathlib import Path

from rpl_training.selection import best_of
from rpl_training.utils import read_log

#: validation.csv column prefixes of the development suite's sets, in the order of scripts/dev_suite.yaml
SETS = {"roadanomaly_dev": "RoadAnomaly dev", "smiyc_roadanomaly21_val": "RoadAnomaly21",
        "smiyc_roadobstacle21_val": "RoadObstacle21", "fishyscapes_static_val": "FS Static"}
COLUMNS = ["ap", "fpr95"] + [f"{key}_{metric}" for key in SETS for metric in ("ap", "fpr95")]


def chosen_and_final(run: Path):
    """(chosen row, final row) of a run's validations, as {column: value}."""
    rows = read_log(run / "validation.csv")
    if not rows:
        raise SystemExit(f"{run}: no validation yet")
    return best_of(rows), rows[-1]


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
    header = "mean AP / FPR95 | " + " | ".join(SETS.values())
    print(f"| run | iteration | {header} |")
    print("|---|---:|" + "---:|" * (1 + len(SETS)))
    chosen = {}
    for name, runs in arms.items():
        chosen[name] = []
        for run in runs:
            best, final = chosen_and_final(run)
            chosen[name].append(best)
            print(f"| {name}: {run.name} (chosen) | {int(best['iteration'])} | {cells(best)} |")
            if final is not best:
                print(f"| {name}: {run.name} (final) | {int(final['iteration'])} | {cells(final)} |")
    print(f"\n| arm (mean ± sd over seeds, chosen checkpoints) | seeds | {header} |")
    print("|---|---:|" + "---:|" * (1 + len(SETS)))
    for name, rows in chosen.items():
        parts = []
        for column in ["ap"] + [f"{key}_ap" for key in SETS]:
            values = [100 * row[column] for row in rows]
            sd = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""  # one seed: no spread
            parts.append(f"{statistics.mean(values):.1f}{sd}")
        print(f"| {name} | {len(rows)} | " + " | ".join(parts) + " |")
    names = list(chosen)
    for name in names[1:]:
        a, b = [100 * r["ap"] for r in chosen[names[0]]], [100 * r["ap"] for r in chosen[name]]
        spread = [statistics.variance(v) for v in (a, b) if len(v) > 1]
        difference = f"\n{name} − {names[0]}: mean AP {statistics.mean(b) - statistics.mean(a):+.1f} "
        if not spread:
            print(difference + "(one seed per arm: no standard error)")
            continue
        pooled = statistics.mean(spread)
        se = math.sqrt(pooled / len(a) + pooled / len(b))
        print(difference + f"(standard error of the difference {se:.1f}, from the pooled seed variance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
