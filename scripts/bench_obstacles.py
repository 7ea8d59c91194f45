#!/usr/bin/env python3
"""Node-side cost of the obstacle outputs per 1920×1080 frame, and flicker with / without persistence.

1. Cost: the embedded model's prediction on a real frame (a Udacity highway frame, a RoadAnomaly
   scene), resized to 1920×1080, and a synthetic prediction with 48 boxes on the road (many objects);
   each step the node runs when every obstacle output is subscribed: work copy, corridor, objects,
   ground projection, persistence, confidence image, obstacle mask, ground cloud; median / p95 over
   ``--repeat`` runs (target: total ≤ 10 ms).
2. Flicker on a real clip (consecutive frames of Udacity highway footage, or the shipped drive
   samples): objects per frame as the node finds them, tracked with k = n = 1 (every detection
   published at once), with the node's default persistence (k = 2 of n = 3) and with k = 3 of n = 5.
   Flicker = published objects (ids) that are published in one frame only.

    python scripts/bench_obstacles.py [--clip VIDEO] [--clip-frames 91] [--repeat 50]
"""

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from rpl_perception.anomaly_objects import find_anomaly_objects, project_objects
from rpl_perception.corridor import drivable_corridor
from rpl_perception.ground_projection import CameraIntrinsics, CameraPose, GroundProjector
from rpl_perception.image import read_rgb
from rpl_perception.obstacles import ObstacleSettings, confidence_image, find_obstacles, work_size
from rpl_perception.persistence import ObjectTracker
from rpl_perception.resources import SAMPLES_ROOT
from rpl_perception.segmenter import AnomalySegmenter

SIZE = (1920, 1080)
CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "driving_udacity" / "videos" / "project_video_clip1.mp4"
FRAMES = {"Udacity highway": SAMPLES_ROOT / "drive" / "project_video_clip2_000.jpg",
          "RoadAnomaly scene": SAMPLES_ROOT / "images" / "animals03_Zebras_in_the_road.jpg"}
# a 1920×1080 camera 1.5 m over the road, 3° down (the cost does not depend on the exact values)
PROJECTOR = GroundProjector(CameraIntrinsics(*SIZE, [[1400, 0, 959.5], [0, 1400, 539.5], [0, 0, 1]],
                                             [-0.2, 0.05, 0, 0, 0]), CameraPose(1.5, np.radians(3.0)), 40.0)


def many_boxes(threshold: float, rows: int = 4, columns: int = 12):
    """A synthetic 1920×1080 prediction with rows × columns separate anomalous boxes on the road:
    the cost per object, beyond what real frames hold."""
    w, h = SIZE
    labels = np.full((h, w), 10, np.uint8)  # sky
    labels[h * 2 // 5:] = 0  # road
    score = np.full((h, w), threshold - 2.0, np.float32)
    for r in range(rows):
        y = h // 2 + r * (h // 2) // rows
        for c in range(columns):
            x = 40 + c * (w - 80) // columns
            score[y:y + 40, x:x + 60] = threshold + 2.0
    return score, labels


def timed(function, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, 1e3 * np.median(times), 1e3 * np.percentile(times, 95)


def cost_rows(score, labels, threshold, display, repeat):
    """(step, median ms, p95 ms) of each step on one 1920×1080 prediction."""
    settings = ObstacleSettings()
    size = work_size(*SIZE, settings.work_width)
    rows = []
    # built once per camera (its first frame after a CameraInfo), not per frame
    projector, *t = timed(lambda: GroundProjector(PROJECTOR.intrinsics.scaled(*size), PROJECTOR.pose, 40.0), 1)
    _, *t = timed(lambda: projector.table, 1)
    rows.append(("per-pixel ground table (once per camera)", *t))
    (small, small_labels), *t = timed(lambda: (cv2.resize(score, size, interpolation=cv2.INTER_AREA),
                                               cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)), repeat)
    rows.append(("work copy (960×540)", *t))
    corridor, *t = timed(lambda: drivable_corridor(small_labels, settings.corridor), repeat)
    rows.append(("corridor", *t))
    objects, *t = timed(lambda: find_anomaly_objects(small, small_labels, threshold, corridor, 50, 3), repeat)
    rows.append(("objects", *t, f" ({len(objects.objects)} found)"))
    projected, *t = timed(lambda: project_objects(objects, projector), repeat)
    rows.append(("ground projection", *t))
    tracker = ObjectTracker()
    _, *t = timed(lambda: tracker.update(objects.objects), repeat)
    rows.append(("persistence", *t))
    _, *t = timed(lambda: confidence_image(score, threshold, display), repeat)
    rows.append(("confidence image (1920×1080)", *t))
    _, *t = timed(lambda: objects.mono8([o.index for o in objects.objects], SIZE), repeat)
    rows.append(("obstacle mask (1920×1080)", *t))

    def cloud(found):  # the contact points the projection found, as the node's cloud gathers them
        return np.concatenate([o.ground.contact_points for o in found.objects] or [np.zeros((0, 3))])

    _, *t = timed(lambda: cloud(projected), repeat)
    rows.append(("ground cloud (contact points)", *t))
    total_tracker = ObjectTracker()

    def everything():
        found = find_obstacles(score, labels, threshold, settings, projector)
        tracked = total_tracker.update(found.objects.objects)
        confidence_image(score, threshold, display)
        found.objects.mono8([o.index for _, o in tracked], SIZE)
        cloud(found.objects)

    _, *t = timed(everything, repeat)
    rows.append(("**all outputs subscribed (node path)**", *t))
    return rows


def clip_frames(path: Path, count: int):
    if path.is_file():
        capture = cv2.VideoCapture(str(path))
        for _ in range(count):
            ok, bgr = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:
        for file in sorted((SAMPLES_ROOT / "drive").glob("*.jpg"))[:count]:
            yield read_rgb(file)


def flicker(segmenter, path: Path, count: int):
    """Per tracker setting: (published objects per frame, ids, ids that live one frame)."""
    trackers = {"every detection (k = n = 1)": ObjectTracker(1, 1),
                "persistence (k = 2 of n = 3, the node's default)": ObjectTracker(2, 3),
                "persistence (k = 3 of n = 5)": ObjectTracker(3, 5)}
    lifetimes = {name: {} for name in trackers}
    published = {name: 0 for name in trackers}
    frames = 0
    for rgb in tqdm(clip_frames(path, count), total=count, desc="clip", unit="frame"):
        prediction = segmenter.predict(rgb)
        found = find_obstacles(prediction.anomaly, prediction.labels, segmenter.anomaly_threshold)
        frames += 1
        for name, tracker in trackers.items():
            for track_id, _ in tracker.update(found.objects.objects):
                lifetimes[name][track_id] = lifetimes[name].get(track_id, 0) + 1
                published[name] += 1
    return frames, {name: (published[name] / max(frames, 1), len(ids), sum(v == 1 for v in ids.values()))
                    for name, ids in lifetimes.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=CLIP, help="a video of consecutive frames (default: Udacity "
                                                                "project_video_clip1.mp4; the drive samples where absent)")
    parser.add_argument("--clip-frames", type=int, default=91, help="0: the cost table only")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    segmenter = AnomalySegmenter.from_pretrained()
    threshold, display = segmenter.anomaly_threshold, segmenter.display_range
    names = [*FRAMES, "48 synthetic boxes on the road"]
    print("| step | " + " | ".join(f"{name} median / p95 ms" for name in names) + " |")
    print("|---|" + "---:|" * len(names))
    tables = []
    for path in FRAMES.values():
        rgb = cv2.resize(read_rgb(path), SIZE, interpolation=cv2.INTER_LINEAR)
        prediction = segmenter.predict(rgb)
        tables.append(cost_rows(prediction.anomaly, prediction.labels, threshold, display, args.repeat))
    tables.append(cost_rows(*many_boxes(threshold), threshold, display, args.repeat))
    for rows in zip(*tables):
        cells = [f"{row[1]:.2f} / {row[2]:.2f}{row[3] if len(row) > 3 else ''}" for row in rows]
        print(f"| {rows[0][0]} | " + " | ".join(cells) + " |")
    if args.clip_frames <= 0:
        return 0
    source = args.clip if args.clip.is_file() else SAMPLES_ROOT / "drive"
    frames, results = flicker(segmenter, args.clip, args.clip_frames)
    print(f"\nflicker on {source.name} ({frames} frames):\n")
    print("| tracking | published objects per frame | ids | ids that live one frame |")
    print("|---|---:|---:|---:|")
    for name, (per_frame, ids, one) in results.items():
        print(f"| {name} | {per_frame:.2f} | {ids} | {one} ({100 * one / max(ids, 1):.0f} %) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
