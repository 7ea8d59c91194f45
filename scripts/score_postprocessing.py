#!/usr/bin/env python3
"""Score post-processing measured on the development suite (issue 19; the rule that keeps one is in
docs/selection_rule.md): each variant is applied to the raw ``rpl_energy`` map at the network size,
as it would run inside the exported graph, then resized to the label as the segmenter does.

The network runs once per frame (twice with ``flip`` among the variants: the frame and its mirror
image); every variant is scored from those maps with the evaluation's own streaming metrics
(:class:`~rpl_perception.eval.metrics.PixelMetricAccumulator`, Fishyscapes / SMIYC pooled pixels). The
cost of each post-processing on one 1024×512 map (PyTorch, this machine's threads) is printed beside it.

    python scripts/score_postprocessing.py --suite scripts/dev_suite.yaml --model MODEL --out DIR
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT
from rpl_perception.eval.datasets import open_dataset
from rpl_perception.eval.metrics import PixelMetricAccumulator
from rpl_perception.eval.suite import load_suite
from rpl_perception.image import resize_scores
from rpl_perception.scoring import gaussian_smooth
from rpl_perception.segmenter import AnomalySegmenter

#: SML's settings (Jung et al. ICCV 2021, their released code): boundary width 4 px, 4 iterations,
#: dilated smoothing with a 7×7 Gaussian (σ 1) at dilation 6
BOUNDARY_WIDTH, BOUNDARY_ITERATIONS, DILATION = 4, 4, 6


def label_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) class ids → (B, 1, H, W) bool: a pixel whose 3×3 neighbourhood holds another class."""
    x = labels.unsqueeze(1).float()
    high = F.max_pool2d(x, 3, stride=1, padding=1)
    low = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return high != low


def widen(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """A (B, 1, H, W) bool mask dilated by ``radius`` pixels (a square window)."""
    if radius <= 0:
        return mask
    x = F.max_pool2d(mask.float(), (1, 2 * radius + 1), stride=1, padding=(0, radius))  # separable: rows,
    return F.max_pool2d(x, (2 * radius + 1, 1), stride=1, padding=(radius, 0)) > 0  # then columns


def suppress_boundaries(score: torch.Tensor, labels: torch.Tensor, width: int = BOUNDARY_WIDTH,
                        iterations: int = BOUNDARY_ITERATIONS) -> torch.Tensor:
    """SML's boundary suppression: the scores of pixels near a class boundary are replaced, from the
    outside in, by the mean of their non-boundary 3×3 neighbours (the band narrows each iteration)."""
    boundaries = label_boundaries(labels)
    x = score.unsqueeze(1)
    for iteration in range(iterations):
        band = widen(boundaries, int(width - width / iterations * iteration - 1))
        keep = (~band).to(x.dtype)
        # 3×3 sums as 3×3 means: their ratio is the mean over the kept neighbours
        total = F.avg_pool2d(F.pad(x * keep, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        count = F.avg_pool2d(F.pad(keep, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = torch.where(band & (count > 0), total / count.clamp(min=1e-6), x)
    return x.squeeze(1)


def dilated_smooth(score: torch.Tensor, sigma: float = 1.0, dilation: int = DILATION) -> torch.Tensor:
    """SML's dilated smoothing: the 7-tap Gaussian with its taps ``dilation`` pixels apart (reflect pad)."""
    return gaussian_smooth(score, sigma, dilation)


#: name → (post-processing of (raw, raw of the mirror image or None, labels), needs the mirror image)
VARIANTS = {
    "none": (lambda raw, flipped, labels: raw, False),
    "gauss_s1 (shipped)": (lambda raw, flipped, labels: gaussian_smooth(raw, 1.0), False),
    "gauss_s2": (lambda raw, flipped, labels: gaussian_smooth(raw, 2.0), False),
    "flip + gauss_s1": (lambda raw, flipped, labels: gaussian_smooth((raw + flipped) / 2, 1.0), True),
    "boundary + gauss_s1": (lambda raw, flipped, labels: gaussian_smooth(suppress_boundaries(raw, labels), 1.0),
                            False),
    "dilated": (lambda raw, flipped, labels: dilated_smooth(raw), False),
    "boundary + dilated (SML)": (lambda raw, flipped, labels: dilated_smooth(suppress_boundaries(raw, labels)),
                                 False),
}


def raw_maps(segmenter, image, flip: bool):
    """(labels, raw score, raw score of the mirror image flipped back or None) at the network size."""
    batch, _ = segmenter.preprocess([image])
    if flip:
        batch = np.concatenate([batch, batch[:, :, ::-1]])
    labels, raw = segmenter.infer(np.ascontiguousarray(batch))
    raw = torch.from_numpy(np.asarray(raw, np.float32))
    labels = torch.from_numpy(np.asarray(labels).astype(np.int64))
    return labels[:1], raw[:1], (raw[1:].flip(-1) if flip else None)


def measure_set(segmenter, dataset, variants, limit=None, desc=None):
    """{variant: pixel metrics} over the labelled samples of ``dataset``."""
    flip = any(VARIANTS[v][1] for v in variants)
    accumulators = {v: PixelMetricAccumulator() for v in variants}
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in tqdm(range(count), desc=desc or dataset.kind, unit="img", leave=False):
        sample = dataset[index]
        labels, raw, flipped = raw_maps(segmenter, sample.image, flip)
        size = sample.label.shape[::-1]
        for name in variants:
            score = VARIANTS[name][0](raw, flipped, labels)[0].numpy()
            accumulators[name].update(resize_scores(score, size), sample.label)
    return {name: acc.compute() for name, acc in accumulators.items()}


def cost_ms(variants, size=(1024, 512), repeats=15):
    """Median milliseconds of each post-processing on one map (the network pass of flip not included)."""
    w, h = size
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(1, h, w, generator=generator) - 8
    labels = torch.from_numpy(np.repeat(np.arange(8), w * h // 8).reshape(1, h, w))
    costs = {}
    for name in variants:
        function = VARIANTS[name][0]
        times = []
        for _ in range(repeats + 2):
            start = time.perf_counter()
            function(raw, raw, labels)
            times.append(time.perf_counter() - start)
        costs[name] = 1000 * statistics.median(times[2:])
    return costs


def table(results, costs, sets):
    head = "| variant | mean AP / FPR95 | " + " | ".join(sets) + " | cost [ms] |"
    lines = [head, "|" + "---|" * (len(sets) + 3)]
    for name in results[sets[0]]:
        per_set = [results[s][name] for s in sets]
        mean_ap = 100 * sum(m["ap"] for m in per_set) / len(sets)
        mean_fpr = 100 * sum(m["fpr95"] for m in per_set) / len(sets)
        cells = " | ".join(f"{100 * m['ap']:.1f} / {100 * m['fpr95']:.1f}" for m in per_set)
        lines.append(f"| {name} | {mean_ap:.1f} / {mean_fpr:.1f} | {cells} | {costs[name]:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="scripts/dev_suite.yaml")
    parser.add_argument("--model", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--network-size", default="1024x512", help="WIDTHxHEIGHT")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--limit", type=int, default=None, help="frames per set (a smoke test)")
    parser.add_argument("--cost-only", action="store_true", help="only the cost table (no model, no data)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json and table.md")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    width, height = (int(side) for side in args.network_size.lower().split("x"))
    if args.cost_only:
        for name, ms in cost_ms(variants, (width, height)).items():
            print(f"{name:28s} {ms:7.1f} ms")
        return 0
    segmenter = AnomalySegmenter.from_checkpoint(args.model, score="rpl_energy", smoothing_sigma=0.0,
                                                 network_size=(width, height))
    results = {}
    for entry in load_suite(args.suite):
        results[entry.name] = measure_set(segmenter, open_dataset(entry.kind, entry.root), variants, args.limit)
    costs = cost_ms(variants, (width, height))
    text = table(results, costs, list(results))
    print(f"model {args.model}, network {width}×{height}; AP / FPR95 in %\n{text}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(text + "\n")
        (args.out / "results.json").write_text(json.dumps(
            {"model": args.model, "network_size": [width, height], "costs_ms": costs,
             "sets": {s: {v: {k: float(x) for k, x in m.items() if not math.isnan(float(x))}
                          for v, m in r.items()} for s, r in results.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
