#!/usr/bin/env python3
"""Peak memory of the streaming evaluation (rpl_perception.eval.evaluation) as the number of frames grows.

Feeds N synthetic frames into the same path an offline evaluation takes after the network: a bag
is written, read back frame by frame (``frames_from_bag``: decode + match by stamp) and every frame's
score maps (4 scores, as the baselines of a model without RPL weights) go into ``Evaluation``
(pixel histograms, SMIYC component metrics, mIoU, the 4 worst frames). The network is left out:
its memory does not depend on N. Prints per N: peak traced Python/numpy memory (tracemalloc) while
streaming, process peak RSS so far, and time per frame.

    python scripts/bench_eval_memory.py                                  # 10, 100, 1000 frames of 640×360
    python scripts/bench_eval_memory.py --frames 10 100 --width 1280 --height 720
"""

import argparse
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rpl_perception.eval.bags import BagFrame, write_frames  # noqa: E402
from rpl_perception.eval.evaluation import Evaluation  # noqa: E402
from rpl_perception.eval.frames import frames_from_bag  # noqa: E402

SCORES = ("energy", "max_logit", "max_softmax", "entropy")


def synthetic_frames(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for _ in range(count):
        label = np.zeros((height, width), np.uint8)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        label[top:top + height // 6, left:left + width // 6] = 1
        label[-height // 10:] = 255
        yield BagFrame(image, label, rng.integers(0, 19, (height, width), dtype=np.uint8))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    rows = []
    for count in args.frames:
        folder = Path(tempfile.mkdtemp(prefix="bench_eval_memory_"))
        try:
            write_frames(folder / "bag", synthetic_frames(count, args.height, args.width), rate_hz=10)
            evaluation = Evaluation(SCORES, thresholds={s: 1.0 for s in SCORES})
            tracemalloc.start()
            started = time.perf_counter()
            frames, total = frames_from_bag(folder / "bag", "/cam/image_raw")
            for frame in tqdm(frames, total=total, desc=f"{count} frames", leave=False):
                noise = rng.standard_normal(frame.label.shape, dtype=np.float32)
                maps = {name: noise + np.float32(i + 1) * (frame.label == 1) for i, name in enumerate(SCORES)}
                evaluation.update(frame, maps, frame.semantic)
            result = evaluation.result()
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            shutil.rmtree(folder)
        assert result.summary["num_labelled"] == count
        rows.append((count, count * args.width * args.height, peak / 2**20,
                     resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1e3 * elapsed / count))
    print(f"\nstreaming evaluation, {args.width}×{args.height} frames, {len(SCORES)} scores + components + mIoU")
    print(f"{'frames':>7} {'pixels':>14} {'peak traced MiB':>16} {'peak RSS MiB':>13} {'ms/frame':>9}")
    for count, pixels, traced, rss, ms in rows:
        print(f"{count:>7} {pixels:>14,} {traced:>16.1f} {rss:>13.1f} {ms:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
