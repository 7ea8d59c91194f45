"""Inference backends: each runs an :class:`~rpl_perception.models.AnomalyModel` on a batch.

A backend is called with a (B, H, W, 3) uint8 RGB numpy batch at the network size and returns
``(labels, anomaly)`` numpy arrays of shapes (B, H, W), uint8 and float32 (anomaly (B, S, H, W)
for a model giving S scores). Each also has ``name``, ``device``, ``describe()``, and for the
benchmark the stages ``upload(batch)``, ``run(inputs)``, ``download(outputs)``,
``synchronize()`` and ``peak_device_memory()``.

- ``torch``: PyTorch eager (:class:`TorchBackend`), CPU or CUDA (fp16 autocast, channels_last).
- ``onnxruntime``: the exported graph on ONNX Runtime (:class:`OnnxRuntimeBackend`), CPU or CUDA.
- ``tensorrt``: the exported graph as a cached TensorRT engine (:class:`TensorRTBackend`).

:class:`DeploymentSpec` says which one, how and where its files are; its
:meth:`~DeploymentSpec.create_backend` builds it by name, or picks the fastest that works with ``auto``.
"""

from .common import BACKENDS, DEFAULT_WORKSPACE_GB, PRECISIONS, BackendUnavailable
from .deployment import DeploymentSpec
from .factory import AUTO_ORDER
from .onnx_cache import default_cache_dir, exported_onnx
from .onnxruntime_backend import OnnxRuntimeBackend
from .tensorrt_backend import TensorRTBackend
from .torch_backend import TorchBackend

__all__ = ["BACKENDS", "PRECISIONS", "DEFAULT_WORKSPACE_GB", "AUTO_ORDER", "BackendUnavailable", "DeploymentSpec",
           "TorchBackend", "OnnxRuntimeBackend", "TensorRTBackend",
           "default_cache_dir", "exported_onnx"]
