"""rpl_perception: semantic segmentation with a Residual Pattern Learning anomaly branch.

The inference core (:class:`AnomalySegmenter`) is ROS-free; :mod:`rpl_perception.ros` wraps it
in a ROS 2 node. ``AnomalySegmenter`` is imported on first use, so that torch-free parts (the
evaluation metrics, the image codec) do not pay for importing torch.

The modules form layers (core ← backends ← segmenter ← ros / eval / training ← commands):
docs/layers.md has the table, which test/test_import_graph.py enforces.
"""

__version__ = "0.1.0"

__all__ = ["AnomalySegmenter", "Prediction", "__version__"]


def __getattr__(name):
    if name in ("AnomalySegmenter", "Prediction"):
        from . import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
