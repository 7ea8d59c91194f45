"""scripts/compare_runs.py: the checkpoint each run's rule chooses, and arm means, spreads and the
standard error of their difference, from validation.csv files written here."""

import csv
import math
from pathlib import Path

from rpl_training_testdata import load_script


def write_run(folder: Path, rows):
    folder.mkdir()
    script = load_script("compare_runs")
    with (folder / "validation.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["iteration", "best_ap"] + script.COLUMNS)
        writer.writeheader()
        for iteration, ap, fpr in rows:
            writer.writerow({"iteration": iteration, "best_ap": ap, **{c: (ap if c.endswith("ap") else fpr)
                                                                       for c in script.COLUMNS}})
    return folder


def test_arms_chosen_checkpoints_means_and_the_difference(tmp_path, capsys):
    script = load_script("compare_runs")
    a1 = write_run(tmp_path / "a1", [(400, 0.20, 0.5), (800, 0.26, 0.4)])
    a2 = write_run(tmp_path / "a2", [(400, 0.30, 0.3), (800, 0.28, 0.35)])  # chosen: iteration 400
    b1 = write_run(tmp_path / "b1", [(400, 0.30, 0.4), (800, 0.32, 0.4)])
    b2 = write_run(tmp_path / "b2", [(400, 0.33, 0.4), (800, 0.34, 0.3)])
    assert script.main([f"without={a1},{a2}", f"on road={b1},{b2}"]) == 0
    out = capsys.readouterr().out
    assert "| without: a2 (chosen) | 400 | 30.0 / 30.0 |" in out
    assert "| without: a2 (final) | 800 | 28.0 / 35.0 |" in out
    assert "| without: a1 (chosen) | 800 |" in out and "a1 (final)" not in out
    # means 28.0 (26, 30) and 33.0 (32, 34); sds 2.83 and 1.41; pooled variance 5, SE sqrt(5/2 + 5/2)
    assert "| without | 2 | 28.0 ± 2.8 |" in out and "| on road | 2 | 33.0 ± 1.4 |" in out
    assert f"on road − without: mean AP +5.0 (standard error of the difference {math.sqrt(5.0):.1f}" in out
