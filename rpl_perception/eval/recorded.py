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
    ground truth, matched by header stamp; a bag without ground truth (the camera and the node's
    outputs, as recorded on the vehicle) gives the frames to the ``observers`` (the drive) only.

    ``score`` names what the node published (e.g. ``energy``); with the checkpoint ``meta`` its
    display range and threshold are used for overlays and component metrics. Delivery counts the
    labelled frames (in a bag without ground truth: the camera frames) with an anomaly output; where
    the camera topic is in the bag too, latency is each output's bag time minus its camera frame's bag
    time (as the recorder received them). ``skipped`` collects malformed messages instead of failing.
    """
    from tqdm import tqdm

    available = bag_topics(bag)
    topics = BagTopics.for_camera(image_topic, label_topic, available)
    sent_topic = topics.label if topics.label in available else topics.image  # what counts as a frame sent
    for needed in (topics.anomaly, sent_topic):
        if needed not in available:
            raise ValueError(f"bag {bag} has no topic {needed}: a recorded evaluation needs the node's anomaly "
                             "output and the ground truth or the camera frames; its topics: "
                             f"{', '.join(sorted(available))}")
    wanted = [t for t in (topics.image, topics.label, topics.semantic, topics.anomaly, topics.semantic_prediction)
              if t in available]
    display, threshold = score_settings(meta, score) if meta is not None else (None, None)
    evaluation = Evaluation([score], thresholds={score: threshold}, component_sizes=component_sizes,
                            num_worst=num_worst, num_classes=class_count(meta), observers=observers)
    sent, delivered, latencies = 0, 0, []
    started = time.perf_counter()
    # in camera order; ground truth comes with its frame, before the outputs, so a frame waits for its outputs only
    required = [t for t in (topics.image, topics.anomaly, topics.semantic_prediction) if t in available]
    groups = match_by_stamp(read_images(bag, wanted, rgb_topics=[topics.image], skipped=skipped), required,
                            ordered=True)
    for index, group in enumerate(tqdm(groups, total=available[topics.image if topics.image in available else
                                                               topics.anomaly][1],
                                       desc="eval recorded", unit="frame", disable=not progress)):
        msgs = group.images
        sent += sent_topic in msgs
        if topics.anomaly not in msgs:
            continue  # lost: counted where it was sent
        delivered += sent_topic in msgs
        label = msgs[topics.label].pixels if topics.label in msgs else None
        anomaly = msgs[topics.anomaly].pixels
        check_same_size(anomaly, label, group.stamp_ns)
        frame = EvalFrame(frame_name(index, group.stamp_ns), msgs[topics.image].pixels if topics.image in msgs
                          else None, label, msgs[topics.semantic].pixels if topics.semantic in msgs else None,
                          group.stamp_ns)
        predicted = msgs[topics.semantic_prediction].pixels if topics.semantic_prediction in msgs else None
        evaluation.update(frame, {score: anomaly}, predicted)
        if topics.image in msgs and sent_topic in msgs:
            latencies.append((msgs[topics.anomaly].log_time_ns - msgs[topics.image].log_time_ns) / 1e9)
    return evaluation.result(
        mode="recorded", source=str(bag),
        settings={"score": score, "display_range": {score: display}, "threshold": {score: threshold},
                  "topics": vars(topics)},
        delivery={"frames_sent": sent, "frames_delivered": delivered,
                  "delivered_ratio": delivered / sent if sent else None,
                  "latency": latency_summary(latencies), "latency_clock": "bag time"},
        timing={"wall_s": time.perf_counter() - started})
