"""scripts/compare_runs.py: the checkpoint each run's rule chooses, and arm means, spreads and the
standard error of their difference, from validation.csv files written here."""

import csv
import math
from pathlib import Path

import pytest

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
    # every set holds the run's AP here, so the real-photo mean and each set equal the suite mean
    assert "| without | 2 | 28.0 ± 2.8 | 28.0 ± 2.8 | 28.0 ± 2.8 |" in out
    assert "| on road | 2 | 33.0 ± 1.4 | 33.0 ± 1.4 |" in out
    assert f"| on road − without | +5.0 (SE {math.sqrt(5.0):.1f}) | +5.0 (SE {math.sqrt(5.0):.1f}) |" in out


def test_the_standard_error_pools_the_seeds_by_degrees_of_freedom():
    script = load_script("compare_runs")
    # squared deviations 1 + 1 (mean 30) and 1 + 0 + 1 (mean 21) over 2 + 3 − 2 = 3 degrees of freedom; the
    # plain average of the two variances (2 and 1) would give sqrt(1.5 × (1/2 + 1/3)) = 1.118 instead
    assert script.standard_error([29.0, 31.0], [20.0, 21.0, 22.0]) == pytest.approx(math.sqrt(4 / 3 * (1 / 2 + 1 / 3)))
    # a single seed adds no spread: the other arm's variance alone, over its own 2 degrees of freedom
    assert script.standard_error([25.0], [20.0, 21.0, 22.0]) == pytest.approx(math.sqrt(2 / 2 * (1 / 1 + 1 / 3)))
    assert script.standard_error([25.0], [20.0]) is None
    assert script.difference([25.0], [20.0, 21.0, 22.0]).startswith("-4.0 (SE 1.2 from one arm's spread)")


def test_a_run_before_its_configured_end_is_marked_unfinished(tmp_path, capsys):
    script = load_script("compare_runs")
    run = write_run(tmp_path / "partial", [(500, 0.30, 0.30), (1000, 0.28, 0.30)])
    (run / "config.yaml").write_text("train:\n  iterations: 8000\n")
    done = write_run(tmp_path / "done", [(500, 0.30, 0.30)])
    (done / "config.yaml").write_text("train:\n  iterations: 500\n")
    assert script.main([f"a={run},{done}"]) == 0
    out = capsys.readouterr().out
    assert "| a: partial (unfinished: 1,000 of 8,000) (chosen) | 500 |" in out
    assert "| a: done (chosen) | 500 |" in out


def test_the_real_photo_mean_leaves_fishyscapes_static_out(tmp_path, capsys):
    script = load_script("compare_runs")
    runs = []
    for name, static in (("r1", 0.9), ("r2", 0.5)):
        folder = tmp_path / name
        folder.mkdir()
        row = {"iteration": 800, "best_ap": 0.4, "ap": 0.4, "fpr95": 0.3,
               "roadanomaly_dev_ap": 0.3, "smiyc_roadanomaly21_val_ap": 0.4, "smiyc_roadobstacle21_val_ap": 0.2,
               "fishyscapes_static_val_ap": static}
        row.update({f"{key}_fpr95": 0.3 for key in script.SETS})
        with (folder / "validation.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, list(row))
            writer.writeheader()
            writer.writerow(row)
        runs.append(folder)
    assert script.main([f"a={runs[0]}", f"b={runs[1]}"]) == 0
    out = capsys.readouterr().out
    assert "| a | 1 | 40.0 | 30.0 | 30.0 | 40.0 | 20.0 | 90.0 |" in out  # real-photo mean (30+40+20)/3
    assert "| b − a | +0.0 (no SE: one seed per arm) | +0.0 (no SE: one seed per arm) |" in out
    assert out.rstrip().endswith("| -40.0 (no SE: one seed per arm) |")  # Fishyscapes Static 50 − 90


def test_the_rule_a_tie_within_half_an_ap_goes_to_the_lower_fpr95():
    from rpl_training.selection import beats, best_of

    assert beats({"ap": 0.30, "fpr95": 0.5}, None)
    assert beats({"ap": 0.306, "fpr95": 0.9}, {"ap": 0.30, "fpr95": 0.3})  # 0.6 AP more: AP decides
    assert not beats({"ap": 0.304, "fpr95": 0.31}, {"ap": 0.30, "fpr95": 0.30})  # a tie, FPR95 higher
    assert beats({"ap": 0.296, "fpr95": 0.29}, {"ap": 0.30, "fpr95": 0.30})  # a tie, FPR95 lower: less AP wins
    assert beats({"ap": 0.305, "fpr95": 0.29}, {"ap": 0.30, "fpr95": 0.30})  # exactly 0.5 AP is a tie
    assert not beats({"ap": 0.30, "fpr95": 0.30}, {"ap": 0.30, "fpr95": 0.30})  # equal: the incumbent stays
    assert not beats({"ap": 0.303, "fpr95": 0.1}, {"ap": 0.30})  # older state without FPR95: it keeps the tie
    rows = [{"iteration": 1, "ap": 0.30, "fpr95": 0.3}, {"iteration": 2, "ap": 0.304, "fpr95": 0.4},
            {"iteration": 3, "ap": 0.31, "fpr95": 0.5}, {"iteration": 4, "ap": 0.307, "fpr95": 0.2}]
    assert best_of(rows)["iteration"] == 4 and best_of([]) is None


def test_a_tie_is_chosen_as_the_trainer_chooses(tmp_path, capsys):
    script = load_script("compare_runs")
    run = write_run(tmp_path / "tie", [(400, 0.300, 0.30), (800, 0.304, 0.40)])  # 0.4 AP more, FPR95 worse
    assert script.main([f"one={run}"]) == 0
    out = capsys.readouterr().out
    assert "| one: tie (chosen) | 400 | 30.0 / 30.0 |" in out and "| one: tie (final) | 800 |" in out
    assert "| one | 1 | 30.0 | 30.0 | 30.0 |" in out  # one seed: a mean without a spread
    assert "difference from" not in out  # one arm: nothing to compare


def test_the_kept_records_of_the_long_recipe_give_its_documented_level(capsys):
    """docs/runs holds the records later comparisons read (runs/ is not kept); the long recipe's two
    seeds must choose the checkpoints docs/rpl_training_long.md reports and give its level."""
    script = load_script("compare_runs")
    records = Path(__file__).resolve().parents[2] / "docs" / "runs"
    assert script.main([f"long={records / 'mixed_long'},{records / 'mixed_long_s2024'}"]) == 0
    out = capsys.readouterr().out
    assert "| long: mixed_long (chosen) | 5000 | 38.4 / 30.9 |" in out
    assert "| long: mixed_long_s2024 (chosen) | 1500 | 36.6 / 27.2 |" in out
    assert "unfinished" not in out  # both ran the config's 8,000 iterations
    assert "| long | 2 | 37.5 ± 1.3 | 39.9 ± 3.7 |" in out
