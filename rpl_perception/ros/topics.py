"""The topic names under their earlier module: ROS-free, they live in :mod:`rpl_perception.topics`."""

from ..topics import OUTPUTS, check_topics, is_compressed, output_topics, sibling_topic

__all__ = ["OUTPUTS", "is_compressed", "sibling_topic", "output_topics", "check_topics"]
