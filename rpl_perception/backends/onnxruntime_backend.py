"""ONNX Runtime backend: runs the graph written by :func:`rpl_perception.export.export_onnx`.

CPU by default; on a GPU the CUDA execution provider, with the input and outputs bound on the
device so that normalisation, argmax and scoring run there and only the uint8 batch and the two
maps cross the bus. (TensorRT runs through our own :mod:`.tensorrt_backend`, whose engines are
cached and validated, not through ONNX Runtime's TensorRT provider.)
"""

import logging
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .common import BackendUnavailable, check_batch, run_in_batches

__all__ = ["OnnxRuntimeBackend", "onnxruntime_providers"]

log = logging.getLogger(__name__)



def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("backend 'onnxruntime' needs the onnxruntime package: "
                                 "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)") from None
    return onnxruntime


def _cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index else 0


def onnxruntime_providers(device: str = "cpu"):
    """The provider list for ``device`` ('cpu' or 'cuda[:N]'); raises BackendUnavailable if absent."""
    ort = _import_onnxruntime()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    available = set(ort.get_available_providers())
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailable(
            f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (available: "
            f"{', '.join(sorted(available))}): install onnxruntime-gpu built for your CUDA")
    return [("CUDAExecutionProvider", {"device_id": _device_index(device)}), "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """Run an exported model with ONNX Runtime: ``backend(batch) → (labels, anomaly)``.

    ``device`` is 'cpu' or 'cuda[:N]' (the graph runs in float32). ``threads`` sets the intra-op thread count
    (None: one per CPU this process may run on; ONNX Runtime's own default pins its threads to
    cores, which was slower on a shared machine). A static-batch graph
    accepts any batch size (run in chunks of its batch); frames must be at the graph's size.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path, device: str = "cpu", *, threads: Optional[int] = None,
                 max_batch: Optional[int] = None):
        ort = _import_onnxruntime()
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.onnx_path}")
        self.device = device
        providers = onnxruntime_providers(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads) if threads is not None else _cpu_count()
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=providers)
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if self.session.get_providers()[0] != wanted:
            # ONNX Runtime falls back to the CPU silently when CUDA libraries fail to load.
            raise BackendUnavailable(f"onnxruntime could not start {wanted} (running on "
                                     f"{self.session.get_providers()}); check the CUDA/cuDNN "
                                     "libraries onnxruntime-gpu needs")
        (image_input,) = self.session.get_inputs()
        batch, height, width, _ = image_input.shape
        if not (isinstance(height, int) and isinstance(width, int)):
            raise ValueError(f"{self.onnx_path}: the image size must be static, "
                             f"got {image_input.shape}")
        self.input_name = image_input.name
        self.size = (width, height)
        #: the graph's static batch, None when dynamic
        self.fixed_batch = batch if isinstance(batch, int) else None
        #: frames per run: the static batch, or 1..max_batch
        self.batch_range = ((batch, batch) if self.fixed_batch is not None
                            else (1, max_batch if max_batch else 1 << 30))
        self.output_names = ["labels", "anomaly"]
        self.on_gpu = device != "cpu"
        self._device_index = _device_index(device) if self.on_gpu else 0
        self._ort = ort
        log.debug("onnxruntime session on %s: %s", device, self.session.get_providers())

    def describe(self) -> str:
        threads = self.session.get_session_options().intra_op_num_threads
        return (f"onnxruntime {self._ort.__version__} {self.session.get_providers()[0]}"
                + ("" if self.on_gpu else f" ({threads} threads)"))

    # The three stages, separately callable so that the benchmark can time each.

    def upload(self, batch: np.ndarray):
        """Host → device (a no-op on the CPU)."""
        if not self.on_gpu:
            return batch
        return self._ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self._device_index)

    def run(self, inputs):
        """The graph: normalisation, network, argmax, score, smoothing; outputs stay on the device."""
        if not self.on_gpu:
            return self.session.run(self.output_names, {self.input_name: inputs})
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, inputs)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self._device_index)
        self.session.run_with_iobinding(binding)
        return binding

    def download(self, outputs) -> Tuple[np.ndarray, np.ndarray]:
        """Device → host: (labels uint8, anomaly float32)."""
        labels, anomaly = outputs if not self.on_gpu else outputs.copy_outputs_to_cpu()
        return labels, anomaly

    def synchronize(self):
        """Nothing to wait for: ONNX Runtime's run returns when the device is done."""

    def peak_device_memory(self):
        """Not reported: ONNX Runtime's CUDA arena exposes no peak."""
        return None

    def _run_fixed(self, batch):
        return self.download(self.run(self.upload(batch)))

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        batch = check_batch(batch, self.size)
        return run_in_batches(self._run_fixed, batch, *self.batch_range)
