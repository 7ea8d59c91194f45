"""Inference backends: each runs an :class:`~rpl_perception.models.AnomalyModel` on a batch.

A backend is called with a (B, H, W, 3) uint8 RGB numpy batch at the network size and returns
``(labels, anomaly)`` numpy arrays of shapes (B, H, W), uint8 and float32.
"""

from .torch_backend import TorchBackend

__all__ = ["TorchBackend"]
