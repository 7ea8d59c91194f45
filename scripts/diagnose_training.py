#!/usr/bin/env python3
"""Three checks of what limits an RPL branch, on training-style samples (pasted COCO objects).

``fit MODEL``: how well a model separates pasted objects from the scene on samples of the training
stream it never saw (a data seed no run uses): pixel AP / FPR95 / AUROC of the closed-set energy and
of the RPL score, and the median logsumexp of the logits at the objects (the RPL energy loss pushes
it to ≤ 0). A branch that does not separate them here underfits its own objective.

``head-capacity``: what the residual can change through the frozen head at all. A *free* residual
(one trainable value per channel and head pixel, no branch) is optimised on a few samples with the
RPL losses; the logsumexp it reaches at the objects and at the scene bounds what any branch
attached there can do::

``sizes``: how tall the pasted objects are in the training samples (on the road and elsewhere, in
pixels of the training frame) against the anomalies of a labelled set at the network's input height
(8-connected components of the anomaly label, box heights scaled by network height / label height)::

    python scripts/diagnose_training.py fit rpl_perception/weights/espnetv2_cityscapes.safetensors
    python scripts/diagnose_training.py head-capacity --steps 300
    python scripts/diagnose_training.py --config training/rpl_training/configs/mixed_long.yaml sizes \
        --suite scripts/dev_suite.yaml --set "SMIYC RoadObstacle21 val"
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model
from rpl_perception.eval.datasets import open_dataset
from rpl_perception.eval.metrics import pixel_metrics
from rpl_perception.eval.suite import suite_set
from rpl_perception.labels import ANOMALY, OUTLIER, VOID
from rpl_perception.models import AnomalyModel, ImageNormalisation
from rpl_training.config import load_config
from rpl_training.distributed import DistContext
from rpl_training.losses import rpl_losses
from rpl_training.run_state import prepare_road_masks
from rpl_training.sample_stream import build_dataset

UNSEEN_SEED = 12345  # no training config uses it: pastes, crops and objects the runs never drew
#: object heights (px) that bound the bins of ``sizes``
HEIGHT_EDGES = (8, 16, 32, 64)


def samples(config, count: int, mean, with_road: bool = False):
    """``count`` samples of the config's stream at :data:`UNSEEN_SEED`; ``with_road``: with the road masks,
    so the on-road share is drawn as in training (computed and cached first where missing)."""
    cfg = load_config(config)
    dataset = build_dataset(cfg["data"], mean, UNSEEN_SEED)
    if with_road and cfg["data"]["outlier"]["on_road"]["share"] > 0:
        dataset.road_masks = prepare_road_masks(cfg, dataset, DistContext())
    picked = np.random.default_rng(0).choice(len(dataset), count, replace=False)
    return [dataset[(0, int(i), int(i))] for i in picked]


def fit(args) -> int:
    network, meta = load_model(args.model)
    drawn = samples(args.config, args.samples, meta.mean)
    scores = ("energy", "rpl_energy") if network.has_branch else ("energy",)
    print(f"{len(drawn)} unseen training samples of {args.config}; model {args.model}\n")
    print("| score | AP | FPR95 | AUROC | median logsumexp at objects | at the scene |")
    print("|---|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        for score in scores:
            model = AnomalyModel(network, num_inlier=meta.num_inlier, mean=meta.mean, std=meta.std, score=score,
                                 smoothing_sigma=meta.smoothing_sigma).eval()
            maps, truth, at_objects, at_scene = [], [], [], []
            for sample in drawn:
                images = torch.from_numpy(sample["image"][None])
                out = network(model.normalise(images))
                logits = (out.rpl if score == "rpl_energy" else out.closed)[:, :meta.num_inlier]
                lse = torch.logsumexp(logits, 1)[0].numpy()
                label = sample["label"]
                maps.append(model(images)[1][0].numpy().ravel())
                truth.append(np.where(label == OUTLIER, 1, np.where(label == VOID, VOID, 0)).ravel())
                at_objects.append(lse[label == OUTLIER])
                at_scene.append(lse[(label != OUTLIER) & (label != VOID)])
            m = pixel_metrics(np.concatenate(maps), np.concatenate(truth))
            print(f"| {score} | {100 * m['ap']:.1f} | {100 * m['fpr95']:.1f} | {100 * m['auroc']:.1f} | "
                  f"{np.median(np.concatenate(at_objects)):.2f} | {np.median(np.concatenate(at_scene)):.2f} |")
    return 0


def head_capacity(args) -> int:
    network, meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)
    seg = network.closed_set
    drawn = samples(args.config, args.samples, meta.mean)
    x = ImageNormalisation(meta.mean, meta.std)(torch.from_numpy(np.stack([s["image"] for s in drawn])))
    label = torch.from_numpy(np.stack([s["label"] for s in drawn])).long()
    with torch.no_grad():
        _, feat = seg.extract_features(x)
        closed = seg.upsample_logits(seg.head(feat), x.shape[-2:])[:, :meta.num_inlier]
    residual = torch.zeros_like(feat, requires_grad=True)
    optimiser = torch.optim.Adam([residual], lr=args.lr)
    print(f"free residual on the head's input {tuple(feat.shape)}, {len(drawn)} samples, Adam lr {args.lr}\n")
    print("| step | total loss | energy term | median logsumexp at objects | at the scene |")
    print("|---:|---:|---:|---:|---:|")
    for step in range(args.steps + 1):
        rpl = seg.upsample_logits(seg.head(feat + residual), x.shape[-2:])[:, :meta.num_inlier]
        terms = rpl_losses(rpl, closed, label)
        if step % max(1, args.steps // 6) == 0:
            lse = torch.logsumexp(rpl.detach(), 1)
            print(f"| {step} | {terms['total'].item():.3f} | {terms['energy'].item():.3f} | "
                  f"{lse[label == OUTLIER].median().item():.2f} | {lse[(label != OUTLIER) & (label != VOID)].median().item():.2f} |")
        optimiser.zero_grad()
        terms["total"].backward()
        optimiser.step()
    return 0


def height_row(name: str, heights) -> str:
    heights = np.asarray(heights, dtype=float)
    edges = (0,) + HEIGHT_EDGES + (np.inf,)
    shares = [np.mean((heights >= lo) & (heights < hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    return (f"| {name} | {len(heights)} | " + " | ".join(f"{100 * v:.0f} %" for v in shares)
            + f" | {np.median(heights):.0f} |")


def anomaly_heights(dataset, network_height: int):
    """Box heights of the anomaly components of every labelled frame, at the network's input height."""
    heights = []
    for sample in dataset:
        count, _, stats, _ = cv2.connectedComponentsWithStats((sample.label == ANOMALY).view(np.uint8),
                                                              connectivity=8)
        scale = network_height / sample.label.shape[0]
        heights.extend(stats[1:count, cv2.CC_STAT_HEIGHT] * scale)
    return heights


def sizes(args) -> int:
    meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)[1]
    on_road, elsewhere = [], []
    for sample in samples(args.config, args.samples, meta.mean, with_road=True):
        rows = np.flatnonzero((sample["label"] == OUTLIER).any(axis=1))
        if rows.size:
            (on_road if sample["on_road"] else elsewhere).append(rows[-1] - rows[0] + 1)
    try:
        entry = suite_set(args.suite, args.set_name)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    edges = (0,) + HEIGHT_EDGES + ("",)
    print(f"pasted objects in {args.samples} samples of {args.config} (seed {UNSEEN_SEED}; px of the training "
          f"frame, cut by the crop) and the anomalies of {entry.name} (px at network height {args.network_height})\n")
    print("| objects | count | " + " | ".join(f"{lo}–{hi} px" if hi else f"≥ {lo} px"
                                             for lo, hi in zip(edges[:-1], edges[1:])) + " | median px |")
    print("|---|---:|" + "---:|" * (len(HEIGHT_EDGES) + 2))
    print(height_row("pasted on the road", on_road))
    print(height_row("pasted elsewhere", elsewhere))
    print(height_row(entry.name, anomaly_heights(open_dataset(entry.kind, entry.root), args.network_height)))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="training/rpl_training/configs/mixed_cpu.yaml",
                        help="training config whose data stream gives the samples")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="separation of pasted objects on unseen training samples")
    p.add_argument("model")
    p.add_argument("--samples", type=int, default=48)
    p.set_defaults(func=fit)
    p = sub.add_parser("head-capacity", help="what a free residual at the head's input can reach")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    p.set_defaults(func=head_capacity)
    p = sub.add_parser("sizes", help="pasted objects' heights against a labelled set's anomalies")
    p.add_argument("--suite", type=Path, required=True)
    p.add_argument("--set", dest="set_name", required=True, help="the suite entry's name")
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--network-height", type=int, default=512)
    p.set_defaults(func=sizes)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(args.command == "head-capacity")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
