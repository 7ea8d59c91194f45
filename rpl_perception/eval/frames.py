"""Frames to evaluate and where they come from: a bag's camera topic with its ground-truth
siblings (matched by header stamp), or a labelled dataset."""

import itertools
import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

from .bag_reader import SkipLog, resolve_topic
from .bags import bag_topics, label_topic_for, match_by_stamp, output_topics, read_images, semantic_label_topic_for

__all__ = ["EvalFrame", "BagTopics", "frames_from_bag", "frames_from_dataset", "frame_name", "batched",
           "check_same_size"]

log = logging.getLogger(__name__)


@dataclass
class EvalFrame:
    """One frame to evaluate; ground truth is optional (a frame without it is only predicted)."""
    name: str
    image: Optional[np.ndarray]  # H×W×3 uint8 RGB; None where a recording lacks the camera topic
    label: Optional[np.ndarray] = None  # anomaly ground truth: 0 in, 1 anomaly, other = void
    semantic: Optional[np.ndarray] = None  # Cityscapes train ids, 255 void
    stamp_ns: Optional[int] = None
    #: a CompressedImage camera frame as recorded: (format, bytes), which live replay sends unchanged
    compressed: Optional[Tuple[str, bytes]] = None


@dataclass
class BagTopics:
    """The topics of one camera in a bag (defaults: the siblings of the camera topic)."""
    image: str
    label: str
    semantic: str
    anomaly: str  # node output (recorded mode)
    semantic_prediction: str  # node output (recorded mode)

    @classmethod
    def for_camera(cls, image_topic: str, label_topic: Optional[str] = None, available=()) -> "BagTopics":
        """The camera's sibling topics; with the bag's ``available`` topic names, each as the bag spells
        it (``cam/labels`` in a ROS 1 bag that stores names without the leading ``/``)."""
        outputs = output_topics(image_topic)
        names = (image_topic, label_topic or label_topic_for(image_topic), semantic_label_topic_for(image_topic),
                 outputs["anomaly"], outputs["semantic"])
        return cls(*(resolve_topic(name, available) or name for name in names))


def frames_from_bag(bag, image_topic: str, label_topic: Optional[str] = None,
                    skipped: Optional[SkipLog] = None) -> Tuple[Iterator[EvalFrame], int]:
    """Camera frames of a bag with their ground truth (matched by header stamp) and how many there are.

    Ground-truth topics are optional: a bag with camera frames only is predicted, not scored. With
    ``skipped``, malformed messages are left out and noted there (else they raise ``ValueError``).
    """
    available = bag_topics(bag)
    topics = BagTopics.for_camera(image_topic, label_topic, available)
    if topics.image not in available:
        raise ValueError(f"bag {bag} has no topic {topics.image}; its topics: {', '.join(sorted(available))}")
    wanted = [t for t in (topics.image, topics.label, topics.semantic) if t in available]

    def frames():
        index = 0
        # in camera order (frames without ground truth wait for none), ground truth up to 8 frames late
        messages = read_images(bag, wanted, rgb_topics=[topics.image], skipped=skipped)
        for group in match_by_stamp(messages, wanted, max_pending=8, ordered=True):
            if topics.image not in group.images:
                log.warning("ground truth at stamp %d has no camera frame; skipped", group.stamp_ns)
                continue
            camera = group.images[topics.image]
            truth = {t: group.images[t].pixels if t in group.images else None for t in (topics.label, topics.semantic)}
            recorded = None if camera.compressed is None else (camera.encoding, camera.compressed)
            yield EvalFrame(frame_name(index, group.stamp_ns), camera.pixels, truth[topics.label],
                            truth[topics.semantic], group.stamp_ns, recorded)
            index += 1

    return frames(), available[topics.image][1]


def frames_from_dataset(dataset) -> Tuple[Iterator[EvalFrame], int]:
    """Samples of a :class:`~rpl_perception.eval.datasets.LabelledImageDataset` as frames.

    Cityscapes-style sets (no anomaly classes) give semantic ground truth, anomaly sets anomaly
    ground truth.
    """
    from .datasets import DATASET_KINDS

    semantic = DATASET_KINDS[dataset.kind].component_sizes is None

    def frames():
        for sample in dataset:
            yield EvalFrame(sample.name, sample.image, None if semantic else sample.label,
                            sample.label if semantic else None)

    return frames(), len(dataset)


def frame_name(index: int, stamp_ns: int) -> str:
    return f"#{index} stamp {stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}"


def batched(iterable, size: int):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def check_same_size(anomaly: np.ndarray, label: Optional[np.ndarray], stamp: int) -> None:
    if label is not None and anomaly.shape != label.shape:
        raise ValueError(f"stamp {stamp}: the node's anomaly map {anomaly.shape} and the label {label.shape} "
                         "differ in size; the node publishes at the camera size, so the bag's camera frames "
                         "and labels must share one size")
