"""``rpl-perception predict``: run the model on image files and write masks, heatmaps and overlays."""

from pathlib import Path

from ..image import IMAGE_SUFFIXES, UnreadableImage, read_rgb
from ..resources import SAMPLE_IMAGES as SAMPLES_DIR
from . import add_model_arguments, anomaly_segmenter_from_args


def register(subparsers):
    p = subparsers.add_parser("predict", help="segment images and score anomalies",
                              description="For each image NAME writes NAME_semantic.png (train ids), "
                                          "NAME_semantic_color.png, NAME_anomaly.png (heatmap on the "
                                          "model's fixed score range), NAME_anomaly.npy (raw float32 "
                                          "score) and NAME_overlay.png into --out.")
    p.add_argument("images", nargs="*", type=Path, help="image files or folders")
    p.add_argument("--samples", action="store_true", help="also run on the bundled sample frames")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=None,
                   help="score above which the overlay outlines anomalies (default: the model's)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the overlay")
    add_model_arguments(p)
    p.set_defaults(func=run)


def collect_images(paths):
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    return files


def run(args) -> int:
    import cv2
    import numpy as np
    from tqdm import tqdm

    from ..visualize import colorize_labels, colorize_scores, overlay

    files = collect_images(list(args.images) + ([SAMPLES_DIR] if args.samples else []))
    if not files:
        raise ValueError("no images given (pass files or folders, or --samples)")
    segmenter = anomaly_segmenter_from_args(args)
    low, high = segmenter.display_range
    threshold = segmenter.anomaly_threshold if args.threshold is None else args.threshold
    args.out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="predict", unit="img"):
        try:
            rgb = read_rgb(path)
        except UnreadableImage as exc:
            tqdm.write(f"skipped {exc}")
            continue
        pred = segmenter.predict(rgb)
        stem = args.out / path.stem
        cv2.imwrite(f"{stem}_semantic.png", pred.labels)
        cv2.imwrite(f"{stem}_semantic_color.png", cv2.cvtColor(colorize_labels(pred.labels), cv2.COLOR_RGB2BGR))
        cv2.imwrite(f"{stem}_anomaly.png", cv2.cvtColor(colorize_scores(pred.anomaly, low, high), cv2.COLOR_RGB2BGR))
        np.save(f"{stem}_anomaly.npy", pred.anomaly)
        ov = overlay(rgb, pred.anomaly, low, high, threshold, alpha=args.alpha)
        cv2.imwrite(f"{stem}_overlay.png", cv2.cvtColor(ov, cv2.COLOR_RGB2BGR))
    print(f"wrote {len(files)} predictions (score: {segmenter.score}) to {args.out}")
    return 0
