"""scripts/diagnose_obstacle_sizes.py: anomalies found per area bin, at the score of a fixed FPR on the
set's normal pixels, on frames built here."""

from pathlib import Path

import numpy as np

from script_loader import load_script


def test_components_are_binned_by_area_and_found_by_half_of_their_pixels():
    script = load_script("diagnose_obstacle_sizes")
    label = np.zeros((200, 300), np.uint8)
    label[10:30, 10:30] = 1      # 400 px: small
    label[100:150, 100:160] = 1  # 3,000 px: medium
    label[0:5, 290:300] = 255    # void: neither normal nor anomaly
    score = np.zeros(label.shape, np.float32)
    score[10:30, 10:19] = 5.0    # 45 % of the small one above any threshold < 5: not found
    score[100:150, 100:140] = 5.0  # 67 % of the medium one: found
    components = sorted(script.component_scores(score, label), key=lambda c: c[0])
    assert [area for area, _ in components] == [400, 3000]
    assert [float((pixels > 1.0).mean()) for _, pixels in components] == [0.45, 2 / 3]
    normal = np.linspace(0.0, 1.0, 1001)  # the 95th percentile is 0.95: both scores of 5 are above it
    table = script.size_table([("model: rpl_energy", normal, components)], fpr=0.05).splitlines()
    assert table[0] == "| score | 0–1,000 px | 1,000–4,000 px | 4,000–16,000 px | ≥ 16,000 px | all |"
    assert table[2] == ("| model: rpl_energy | 0 / 1 (median 45 %) | 1 / 1 (median 67 %) | – | – | "
                        "1 / 2 (median 56 %) |")


def test_an_unknown_set_is_refused_with_the_suites_sets():
    import pytest

    suite = Path(__file__).resolve().parents[1] / "scripts" / "dev_suite.yaml"
    with pytest.raises(SystemExit, match=r"has no set 'RoadObstacle'; it has: RoadAnomaly dev, .*SMIYC RoadObstacle21 val"):
        load_script("diagnose_obstacle_sizes").main(["--suite", str(suite), "--set", "RoadObstacle", "--model", "x"])
