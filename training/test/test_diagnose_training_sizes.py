"""scripts/diagnose_training.py sizes: anomaly heights at the network's input height, binned, and the
heights of objects pasted in samples of a training stream (the tiny data, on-road share 1)."""

import numpy as np

from rpl_perception.eval.datasets import Sample
from rpl_training_testdata import load_script

script = load_script("diagnose_training")


def test_anomaly_heights_are_scaled_to_the_network_height_and_binned():
    label = np.zeros((1024, 600), np.uint8)
    label[100:140, 10:50] = 1    # 40 rows tall → 20 at network height 512
    label[500:510, 300:400] = 1  # 10 rows → 5
    label[700:900, 0:20] = 255   # void is not an anomaly
    heights = script.anomaly_heights([Sample("a", np.zeros((1024, 600, 3), np.uint8), label)], 512)
    assert sorted(heights) == [5.0, 20.0]
    assert script.height_row("set", [5, 20, 100, 100]) == "| set | 4 | 25 % | 0 % | 25 % | 0 % | 50 % | 60 |"


def test_pasted_object_heights_come_from_the_training_stream(tiny_data, tmp_path, monkeypatch, capsys):
    import yaml

    from rpl_training_testdata import small_config

    cfg = small_config(tiny_data, tmp_path / "run", "data.outlier.on_road.share=1.0",
                       f"data.outlier.on_road.cache_dir={tmp_path / 'masks'}", "data.outlier.on_road.classes=[0,1,10]",
                       "data.outlier.on_road.height_at_bottom=[0.2,0.4]")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    drawn = script.samples(config, 3, (0.485, 0.456, 0.406), with_road=True)
    assert any(sample["on_road"] for sample in drawn)  # the road masks were attached
    assert not any(sample["on_road"] for sample in script.samples(config, 3, (0.485, 0.456, 0.406)))
