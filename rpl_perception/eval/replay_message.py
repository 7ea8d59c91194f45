"""Camera messages for live replay, each as the type it was recorded as: a ``CompressedImage`` is sent
with its recorded format and bytes (the node decodes it as it would a camera's), an ``Image`` as rgb8."""

from typing import Optional

from ..topics import is_compressed
from .bag_reader import COMPRESSED_MSGTYPE, IMAGE_MSGTYPES

__all__ = ["check_replayable", "camera_message_type", "camera_message_type_of", "camera_message"]


def check_replayable(topic: str, msgtype: str) -> None:
    """The node reads a topic as ``CompressedImage`` exactly when its name ends in ``/compressed``
    (image_transport's convention); a topic whose type disagrees with its name cannot be replayed."""
    if msgtype not in IMAGE_MSGTYPES:
        raise ValueError(f"topic {topic} holds {msgtype}, not camera frames")
    if (msgtype == COMPRESSED_MSGTYPE) != is_compressed(topic):
        raise ValueError(f"live mode replays {topic} ({msgtype}) to anomaly_node, which reads a topic as "
                         "CompressedImage exactly when its name ends in /compressed, and this one's name and type "
                         "disagree: rename the topic in the bag (rosbags-convert) or use --mode offline")


def camera_message_type(compressed: bool):
    from sensor_msgs.msg import CompressedImage, Image

    return CompressedImage if compressed else Image


def camera_message_type_of(bag, topic: str):
    """The rclpy message type to replay the bag's ``topic`` as, checked against its name."""
    from .bag_reader import bag_topics

    msgtype = bag_topics(bag)[topic][0]
    check_replayable(topic, msgtype)
    return camera_message_type(msgtype == COMPRESSED_MSGTYPE)


def camera_message(message_type, frame, stamp: Optional[tuple], frame_id: str):
    """A ``message_type`` (rclpy's Image or CompressedImage) of an EvalFrame with header (sec, nanosec)."""
    from ..image_codec import fill_image

    msg = message_type()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    if hasattr(msg, "format"):
        if frame.compressed is None:
            raise ValueError(f"frame {frame.name} was not recorded compressed; it cannot be sent as CompressedImage")
        msg.format, data = frame.compressed
        msg.data = data
        return msg
    return fill_image(msg, frame.image, "rgb8")
