"""Recorded evaluation: a bag that already holds the node's ``anomaly`` (and ``semantic``) topics
next to the ground truth is scored as it is; no model runs."""

import time
from typing import Optional, Tuple

from .bags import bag_topics, match_by_stamp, read_images
from .evaluation import Evaluation, EvaluationResult, class_count, latency_summary
from .frames import BagTopics, EvalFrame, check_same_size, frame_name
from .offline import score_settings

__all__ = ["evaluate_recorded"]


def evaluate_recorded(bag, image_topic: str, *, label_topic: Optional[str] = None, score: str = "node",
                      meta=None, component_sizes: Optional[Tuple[int, int]] = (500, 100), num_worst: int = 4,
                      progress: bool = True, skipped=None, observers=()) -> EvaluationResult:
    """Score a bag that holds the node's outputs (``anomaly``, optionally ``semantic``) next to the
    ground truth, matched by header stamp.

    ``score`` names what the node published (e.g. ``energy``); with the checkpoint ``meta`` its
    display range and threshold are used for overlays and component metrics. Delivery counts the
    labelled frames with an anomaly output; where the camera topic is in the bag too, latency is
    each output's bag time minus its camera frame's bag time (as the recorder received them).
    ``skipped`` collects malformed messages instead of failing; ``observers`` see every scored frame.
    """
    from tqdm import tqdm

    available = bag_topics(bag)
    topics = BagTopics.for_camera(image_topic, label_topic, available)
    for needed in (topics.label, topics.anomaly):
        if needed not in available:
            raise ValueError(f"bag {bag} has no topic {needed}: a recorded evaluation needs the ground truth "
                             f"and the node's anomaly output; its topics: {', '.join(sorted(available))}")
    wanted = [t for t in (topics.image, topics.label, topics.semantic, topics.anomaly, topics.semantic_prediction)
              if t in available]
    display, threshold = score_settings(meta, score) if meta is not None else (None, None)
    evaluation = Evaluation([score], thresholds={score: threshold}, component_sizes=component_sizes,
                            num_worst=num_worst, num_classes=class_count(meta), observers=observers)
    delivered, undelivered, latencies = 0, 0, []
    started = time.perf_counter()
    groups = match_by_stamp(read_images(bag, wanted, rgb_topics=[topics.image], skipped=skipped), wanted)
    for group in tqdm(groups, total=available[topics.label][1], desc="eval recorded", unit="frame",
                      disable=not progress):
        msgs = group.images
        if topics.label not in msgs:
            continue  # an output without ground truth: nothing to score
        if topics.anomaly not in msgs:
            undelivered += 1
            continue
        delivered += 1
        label = msgs[topics.label].pixels
        anomaly = msgs[topics.anomaly].pixels
        check_same_size(anomaly, label, group.stamp_ns)
        frame = EvalFrame(frame_name(delivered + undelivered - 1, group.stamp_ns),
                          msgs[topics.image].pixels if topics.image in msgs else None,
                          label, msgs[topics.semantic].pixels if topics.semantic in msgs else None, group.stamp_ns)
        predicted = msgs[topics.semantic_prediction].pixels if topics.semantic_prediction in msgs else None
        evaluation.update(frame, {score: anomaly}, predicted)
        if topics.image in msgs:
            latencies.append((msgs[topics.anomaly].log_time_ns - msgs[topics.image].log_time_ns) / 1e9)
    total = delivered + undelivered
    return evaluation.result(
        mode="recorded", source=str(bag),
        settings={"score": score, "display_range": {score: display}, "threshold": {score: threshold},
                  "topics": vars(topics)},
        delivery={"frames_sent": total, "frames_delivered": delivered,
                  "delivered_ratio": delivered / total if total else None,
                  "latency": latency_summary(latencies), "latency_clock": "bag time"},
        timing={"wall_s": time.perf_counter() - started})
