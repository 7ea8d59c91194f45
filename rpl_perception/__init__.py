"""rpl_perception: semantic segmentation with a Residual Pattern Learning anomaly branch.

The inference core (:class:`AnomalySegmenter`) is ROS-free; :mod:`rpl_perception.ros` wraps it
in a ROS 2 node.
"""

__version__ = "0.1.0"

from .segmenter import AnomalySegmenter, Prediction  # noqa: E402

__all__ = ["AnomalySegmenter", "Prediction", "__version__"]
