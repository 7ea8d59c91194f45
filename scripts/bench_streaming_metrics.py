#!/usr/bin/env python3
"""Memory and time of the streaming pixel metrics as the number of frames grows.

Feeds N synthetic frames (float32 scores, uint8 labels with anomalies and void) into
PixelMetricAccumulator and prints one table row per N: pixels fed, peak traced numpy memory while
streaming (tracemalloc), process peak RSS so far, and time per frame for update() alone. Bounded
memory shows as flat traced-memory and RSS columns while pixels grow 100×. Afterwards it checks the
smallest N against the in-memory pixel_metrics on float16-rounded scores (same seed, same frames).

    python scripts/bench_streaming_metrics.py                         # 10, 100, 1000 frames of 1024×512
    python scripts/bench_streaming_metrics.py --frames 10 100 --width 2048 --height 1024
"""

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rpl_perception.eval.metrics import PixelMetricAccumulator, pixel_metrics, to_float16  # noqa: E402


def synthetic_frame(rng: np.random.Generator, height: int, width: int):
    """Scores ~ N(0, 1) shifted up by 2 on a rectangular anomaly; a void band at the bottom."""
    label = np.zeros((height, width), np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    label[top:top + height // 8, left:left + width // 8] = 1
    label[-height // 10:] = 255
    score = rng.standard_normal((height, width), dtype=np.float32)
    score += 2.0 * (label == 1)
    return score, label


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def stream(frames: int, height: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    accumulator = PixelMetricAccumulator()
    update_seconds = 0.0
    tracemalloc.start()
    tracemalloc.reset_peak()
    for _ in tqdm(range(frames), desc=f"{frames} frames", leave=False):
        score, label = synthetic_frame(rng, height, width)
        start = time.perf_counter()
        accumulator.update(score, label)
        update_seconds += time.perf_counter() - start
    result = accumulator.compute()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, traced_peak, update_seconds / frames


def in_memory(frames: int, height: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    pairs = [synthetic_frame(rng, height, width) for _ in range(frames)]
    return pixel_metrics([to_float16(score) for score, _ in pairs], [label for _, label in pairs])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"PixelMetricAccumulator, {args.width}×{args.height} frames (float32 scores, uint8 labels); "
          f"peak RSS after imports: {peak_rss_mib():.1f} MiB")
    rows, results = [], {}
    for frames in args.frames:
        result, traced, per_frame = stream(frames, args.height, args.width, args.seed)
        results[frames] = result
        rows.append(f"{frames:>7} {frames * args.width * args.height:>14,} {traced / 2**20:>16.1f} "
                    f"{peak_rss_mib():>13.1f} {per_frame * 1e3:>16.2f} {result['ap']:>8.4f} "
                    f"{result['fpr95']:>8.4f} {result['auroc']:>8.4f}")
    print(f"{'frames':>7} {'pixels':>14} {'traced peak MiB':>16} {'peak RSS MiB':>13} "
          f"{'update ms/frame':>16} {'AP':>8} {'FPR95':>8} {'AUROC':>8}")
    print("\n".join(rows))

    smallest = min(args.frames)
    reference = in_memory(smallest, args.height, args.width, args.seed)
    largest_gap = max(abs(results[smallest][key] - reference[key]) for key in reference)
    print(f"in-memory pixel_metrics on the same {smallest} frames (float16-rounded): largest difference "
          f"{largest_gap:.1e} ({'equal' if largest_gap <= 1e-12 else 'DIFFERENT'}); "
          f"peak RSS afterwards {peak_rss_mib():.1f} MiB")


if __name__ == "__main__":
    main()
