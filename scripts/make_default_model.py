"""Build the embedded default model file from a segmenter state dict (and optional RPL weights).

    python scripts/make_default_model.py ../shared/models/espnetv2/espnetv2_s_2.0_city_1024x512.pth \
        --calibration ../shared/data/roadanomaly_dev --out rpl_perception/weights/espnetv2_cityscapes.safetensors

Besides the weights, it records per score two display constants measured on the calibration set
(labelled images/ + labels/, 0 normal, 2 anomaly):
- ``display_range``: the 1st and 99th percentile of the score over all pixels, so heatmap colours
  span the scores that occur on real roads and mean the same in every frame;
- ``anomaly_threshold``: the score at which 5 % of the normal pixels are flagged (a conservative
  operating point for the binary mask; users override it with the node's ``anomaly_threshold``).
"""

import argparse
import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from rpl_perception.calibration import calibrate
from rpl_perception.checkpoint import load_model, save_checkpoint
from rpl_perception.image import resize_labels, resize_rgb
from rpl_perception.models import AnomalyModel
from rpl_perception.scoring import BASELINE_SCORES


def calibrate_on_folder(network, meta, folder: Path, scores):
    images = sorted((folder / "images").glob("*.jpg"))
    if not images:
        raise SystemExit(f"no images in {folder / 'images'}")
    values = {s: [] for s in scores}
    labels = []
    models = {s: AnomalyModel(network, num_inlier=meta.num_inlier, mean=meta.mean, std=meta.std,
                              score=s, smoothing_sigma=meta.smoothing_sigma).eval() for s in scores}
    for path in tqdm(images, desc="calibrating", unit="img"):
        rgb = resize_rgb(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), meta.input_size)
        label = resize_labels(cv2.imread(str(folder / "labels" / (path.stem + ".png")), 0), meta.input_size)
        labels.append(label.ravel())
        with torch.inference_mode():
            for s, model in models.items():
                values[s].append(model(torch.from_numpy(rgb[None]))[1][0].numpy().ravel())
    labels = np.concatenate(labels)
    display, threshold = {}, {}
    for s in scores:
        display[s], threshold[s] = calibrate(np.concatenate(values[s]), labels)
    return display, threshold


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("segmenter", type=Path, help="segmenter state dict (.pth) or rpl_perception checkpoint")
    parser.add_argument("--calibration", type=Path, required=True, help="folder with images/ and labels/")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    network, meta = load_model(args.segmenter)
    scores = (("rpl_energy",) if network.has_branch else ()) + BASELINE_SCORES
    meta.display_range, meta.anomaly_threshold = calibrate_on_folder(network, meta, args.calibration, scores)
    meta.score = scores[0]
    meta.provenance.update({
        "segmenter": "ESPNetv2 s=2.0 Cityscapes, EdgeNets model zoo (Sachin Mehta), MIT licence",
        "source_file": args.segmenter.name,
        "source_sha256": hashlib.sha256(args.segmenter.read_bytes()).hexdigest(),
        "calibration": f"{args.calibration.name}: display_range = 1st/99th percentile of all pixels, "
                       "anomaly_threshold = 95th percentile of normal pixels",
    })
    save_checkpoint(args.out, meta, network)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    for s in scores:
        print(f"  {s:12s} display {meta.display_range[s][0]:8.3f} .. {meta.display_range[s][1]:8.3f}"
              f"   threshold {meta.anomaly_threshold[s]:8.3f}")


if __name__ == "__main__":
    main()
