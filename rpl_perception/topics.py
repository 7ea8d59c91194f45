"""Names of the node's topics: outputs are siblings of each input, as image_proc names them.

``/cam/image_raw`` → ``/cam/semantic``, ``/cam/anomaly``, …; ``/cam/image_raw/compressed`` (a
``sensor_msgs/CompressedImage`` topic) → the same siblings of ``/cam/image_raw``; a relative
``image`` → relative ``semantic``, …, resolved in the node's namespace.
"""

from typing import Dict, List, Sequence

__all__ = ["OUTPUTS", "OBSTACLE_OUTPUTS", "CAMERA_INFO", "is_compressed", "sibling_topic", "output_topics", "check_topics"]

#: every output of each camera; the first three are always published (bags record them)
OUTPUTS = ("semantic", "anomaly", "anomaly_mask", "semantic_color", "overlay")

#: the obstacle outputs (ros.object_outputs: several message types, each only while subscribed)
OBSTACLE_OUTPUTS = ("anomaly_confidence", "obstacle_mask", "obstacles", "obstacle_markers", "obstacle_points")
#: the camera's intrinsics, an input next to each image topic (image_transport's convention)
CAMERA_INFO = "camera_info"

COMPRESSED_SUFFIX = "/compressed"


def is_compressed(topic: str) -> bool:
    """Topics ending in ``/compressed`` carry ``sensor_msgs/CompressedImage`` (image_transport)."""
    return topic.endswith(COMPRESSED_SUFFIX)


def sibling_topic(input_topic: str, name: str) -> str:
    """The topic ``name`` next to ``input_topic`` (its last component replaced)."""
    base = input_topic[: -len(COMPRESSED_SUFFIX)] if is_compressed(input_topic) else input_topic
    prefix, sep, _ = base.rpartition("/")
    return f"{prefix}{sep}{name}"


def output_topics(input_topic: str, names: Sequence[str] = OUTPUTS) -> Dict[str, str]:
    return {name: sibling_topic(input_topic, name) for name in names}


def check_topics(image_topics: Sequence[str]) -> List[str]:
    """Validate the ``image_topics`` parameter; raise ``ValueError`` naming the clash."""
    topics = list(image_topics)
    if not topics:
        raise ValueError("image_topics is empty; give at least one image topic, e.g. ['image']")
    for topic in topics:
        if not topic.strip() or topic != topic.strip() or topic.endswith("/"):
            raise ValueError(f"image topic {topic!r} is not a topic name (no blanks, no trailing '/')")
    if len(set(topics)) != len(topics):
        raise ValueError(f"image_topics lists a topic twice: {topics}")
    owners = {}
    for topic in topics:
        for output in output_topics(topic, OUTPUTS + OBSTACLE_OUTPUTS).values():
            if output in owners:
                raise ValueError(f"image topics {owners[output]!r} and {topic!r} would both publish "
                                 f"{output!r}; give each camera its own namespace")
            if output in topics:
                raise ValueError(f"image topic {output!r} is also an output of {topic!r}; "
                                 "the node would read its own results")
            owners[output] = topic
    return topics
