"""TensorRT backend: load (or build, see :mod:`.tensorrt_build`) the engine of the exported ONNX
file and run it with the named-tensor API of TensorRT 8.6 / 10.x (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``).

Device buffers for every I/O tensor are sized for the profile's largest batch, with one CUDA
stream, pinned host buffers and asynchronous copy → execute → copy on that stream. Memory and
stream come from pycuda where it is installed, else from PyTorch's CUDA tensors
(:mod:`.cuda_runtime`). TensorRT and pycuda are imported only when this backend is used; without
them it raises :class:`BackendUnavailable` naming what to install.
"""

from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

import numpy as np

from .common import check_batch, run_in_batches
from .cuda_runtime import cuda_runtime
from .tensorrt_build import (
    DEFAULT_WORKSPACE_GB,
    BuiltEngine,
    build_engine,
    engine_cache_for,
    engine_io,
    import_tensorrt,
)

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["TensorRTBackend", "BuiltEngine", "build_engine", "engine_cache_for", "import_tensorrt",
           "cuda_runtime", "engine_io"]


class TensorRTBackend:
    """Run the exported model with TensorRT: ``backend(batch) → (labels, anomaly)``.

    Arguments as :func:`build_engine`: the engine is taken from the cache (or ``engine_path``)
    or built on first use (minutes). Any batch size runs: in chunks of at most the profile's
    maximum, a chunk below its minimum padded (see :func:`run_in_batches`). ``runtime``: the
    CUDA runtime to use (default :func:`cuda_runtime` of ``device``).
    """

    name = "tensorrt"
    output_names = ("labels", "anomaly")

    def __init__(self, onnx_path, device: str = "cuda:0", precision: str = "fp32", *,
                 batch: Optional[Sequence[int]] = None,
                 workspace_gb: float = DEFAULT_WORKSPACE_GB, calibration_dir=None, cache_dir=None,
                 engine_path=None, force_rebuild: bool = False, runtime=None):
        self.trt = import_tensorrt()
        self.runtime = runtime or cuda_runtime(device)
        self.device, self.precision = device, precision
        self.built = build_engine(onnx_path, device, precision, batch=batch,
                                  workspace_gb=workspace_gb, calibration_dir=calibration_dir,
                                  cache_dir=cache_dir, engine_path=engine_path, force=force_rebuild,
                                  runtime=self.runtime)
        self.engine: "trt.ICudaEngine" = self.built.engine
        self.cache = self.built.cache
        (profile,) = self.cache.key.profile
        self.input_name = profile.name
        self.size = (profile.max[2], profile.max[1])
        self.min_batch, self.max_batch = profile.min[0], profile.max[0]
        io = engine_io(self.engine)
        missing = [n for n in (self.input_name, *self.output_names) if n not in io]
        if missing:
            raise RuntimeError(f"engine {self.cache.engine_path} lacks the tensors {missing}; "
                               f"it has {sorted(io)}")
        self.dtypes = {name: np.dtype(str(spec["dtype"])) for name, spec in io.items()}
        with self.runtime.active():
            self.context: "trt.IExecutionContext" = self.engine.create_execution_context()
            self.buffers: Dict[str, object] = {}
            self.host: Dict[str, np.ndarray] = {}
            for name, spec in io.items():
                # Dynamic dims are the batch only: size every buffer for the largest batch.
                shape = [self.max_batch if d < 0 else d for d in spec["shape"]]  # type: ignore[attr-defined]
                buffer, pointer = self.runtime.device_array(shape, spec["dtype"])
                self.buffers[name] = buffer
                if not self.context.set_tensor_address(name, pointer):
                    raise RuntimeError(f"TensorRT refused the device address of tensor {name!r}")
                if name == self.input_name or name in self.output_names:
                    self.host[name] = self.runtime.pinned_array(shape, spec["dtype"])

    def describe(self) -> str:
        low, high = self.min_batch, self.max_batch
        return (f"TensorRT {self.trt.__version__} {self.precision} (fp32 scores), batch "
                f"{low}..{high} ({self.cache.engine_path.name}, buffers via {self.runtime.kind})")

    def upload(self, batch: np.ndarray) -> int:
        """Host → pinned → device, asynchronously on the stream; sets the input shape."""
        n = len(batch)
        if not self.min_batch <= n <= self.max_batch:
            raise ValueError(f"batch of {n} outside the engine's profile "
                             f"{self.min_batch}..{self.max_batch}")
        with self.runtime.active():
            host = self.host[self.input_name][:n]
            np.copyto(host, batch)
            self.runtime.to_device(self.buffers[self.input_name], host)
            if not self.context.set_input_shape(self.input_name, tuple(batch.shape)):
                raise RuntimeError(f"TensorRT rejected input shape {tuple(batch.shape)} for "
                                   f"{self.input_name!r} (profile {self.min_batch}..{self.max_batch} "
                                   f"of {self.cache.engine_path.name})")
        return n

    def run(self, n: int) -> int:
        """Enqueue the engine on the stream (normalisation … smoothing, all on the GPU)."""
        with self.runtime.active():
            if not self.context.execute_async_v3(self.runtime.stream_handle):
                raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log")
        return n

    def download(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """Device → pinned host, then wait for the stream; returns copies the caller may keep."""
        with self.runtime.active():
            for name in self.output_names:
                self.runtime.to_host(self.host[name][:n], self.buffers[name])
            self.runtime.synchronize()
        labels, anomaly = (self.host[name][:n] for name in self.output_names)
        # copies: the pinned buffers are reused by the next batch
        return labels.astype(np.uint8), anomaly.astype(np.float32)

    def synchronize(self) -> None:
        with self.runtime.active():
            self.runtime.synchronize()

    def peak_device_memory(self) -> Optional[int]:
        """What this backend holds on the GPU: the engine's activation memory at its largest
        profile, its I/O buffers and its weights (≈ the serialized engine's size). TensorRT
        allocates these itself, so no allocator's peak counter sees them."""
        activations = getattr(self.engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
        if activations is None:
            activations = self.engine.device_memory_size
        return int(activations) + int(self.runtime.allocated_bytes) + int(self.built.engine_bytes)

    def _run_chunk(self, batch: np.ndarray):
        return self.download(self.run(self.upload(batch)))

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, ...]:
        batch = check_batch(batch, self.size)
        return run_in_batches(self._run_chunk, batch, self.min_batch, self.max_batch)

