"""``eval --obstacles``: the corridor-restricted scores and the object output beside the pixel scores."""

import numpy as np
import pytest

from rpl_perception import AnomalySegmenter
from rpl_perception.corridor import drivable_corridor, restrict_to_corridor
from rpl_perception.eval.frames import EvalFrame
from rpl_perception.eval.metrics import component_metrics, pixel_metrics, to_float16
from rpl_perception.eval.obstacle_maps import OBJECTS, obstacle_maps
from rpl_perception.eval.offline import evaluate_offline
from rpl_perception.labels import CITYSCAPES_CLASSES

ROAD, VEGETATION = CITYSCAPES_CLASSES.index("road"), CITYSCAPES_CLASSES.index("vegetation")


def test_obstacle_maps_of_one_frame():
    labels = np.full((120, 160), VEGETATION, np.uint8)
    labels[60:, 30:130] = ROAD
    score = np.zeros((120, 160), np.float32)
    score[80:100, 60:80] = 3.0  # on the road
    score[10:40, 0:20] = 3.0  # in the trees
    maps = obstacle_maps("s", score, labels, threshold=1.0, display_range=(0.0, 4.0))
    assert set(maps) == {"s+corridor", "s+corridor_prior", OBJECTS}
    assert maps["s+corridor"][90, 70] == 3.0 and maps["s+corridor"][20, 10] == 0.0
    # far from the corridor: the full penalty, PRIOR_PENALTY (0.25) × the span (4)
    assert maps["s+corridor_prior"][90, 70] == 3.0 and maps["s+corridor_prior"][20, 10] == pytest.approx(2.0)
    objects = maps[OBJECTS]
    assert objects.dtype == np.float32 and objects[80:100, 60:80].all() and objects.sum() == 400


@pytest.fixture(scope="module")
def segmenter():
    return AnomalySegmenter.from_pretrained(network_size=(128, 64))


def frames(count=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
        image[32:, :] = (90, 90, 90)  # a grey lower half the segmenter may call road
        label = np.zeros((64, 128), np.uint8)
        label[40:52, 50 + 10 * i:70 + 10 * i] = 1
        image[40:52, 50 + 10 * i:70 + 10 * i] = (255, 0, 255)
        out.append(EvalFrame(f"#{i}", image, label, None))
    return out


def test_offline_eval_scores_the_obstacle_outputs_beside_the_pixel_scores(segmenter):
    result = evaluate_offline(segmenter, iter(frames()), total=3, scores=["rpl_energy"], progress=False,
                              component_sizes=(50, 10), obstacles=True)
    assert list(result.metrics) == ["rpl_energy", "rpl_energy+corridor", "rpl_energy+corridor_prior", OBJECTS]
    predictions = [segmenter.predict(f.image) for f in frames()]
    hard = [restrict_to_corridor(p.anomaly, drivable_corridor(p.labels)) for p in predictions]
    labels = [f.label for f in frames()]
    expected = pixel_metrics([to_float16(h) for h in hard], labels)
    assert result.metrics["rpl_energy+corridor"]["ap"] == pytest.approx(expected["ap"], abs=2e-3)
    objects = result.metrics[OBJECTS]
    assert objects["component_threshold"] == 0.5
    threshold, display = segmenter.anomaly_threshold, segmenter.display_range
    maps = [obstacle_maps("rpl_energy", p.anomaly, p.labels, threshold, display)[OBJECTS] for p in predictions]
    assert objects["component_siou"] == pytest.approx(component_metrics(maps, labels, 0.5, 50, 10)["siou"],
                                                      abs=0.02, nan_ok=True)


def test_cli_eval_obstacles(tmp_path, capsys):
    pytest.importorskip("rosbags", reason="bags need the rosbags package (pip install '.[eval]')")
    from rpl_perception.cli import main
    from rpl_perception.eval.bags import BagFrame, write_frames

    write_frames(tmp_path / "bag", [BagFrame(f.image, f.label) for f in frames(2)], start_ns=1_600_000_000_000_000_000)
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(tmp_path / "report"), "--size", "128x64",
                 "--scores", "rpl_energy", "--obstacles"]) == 0
    out = capsys.readouterr().out
    assert "| rpl_energy+corridor |" in out and "| rpl_energy+corridor_prior |" in out and "| objects |" in out
    assert main(["eval", "--bag", str(tmp_path / "bag"), "--out", str(tmp_path / "r2"), "--mode", "recorded",
                 "--obstacles"]) == 2
    assert "--obstacles works in offline mode only" in capsys.readouterr().err
