"""TensorRT backend: build (or load from the cache) an engine from the exported ONNX file and run it.

Written against the TensorRT 8.6 / 10.x Python API (named tensors: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). TensorRT and pycuda are imported only when this
backend is used; without them it raises :class:`BackendUnavailable` naming what to install.

- Build: ONNX parser → builder config with a workspace limit, fp16 / int8 flags (int8 with
  entropy calibration, ``IInt8EntropyCalibrator2``, on a folder of images), an optimisation
  profile for a dynamic batch, and a timing cache file beside the model. Engines are cached by
  :class:`~rpl_perception.backends.engine_cache.EngineCache`.
- Run: device buffers for every I/O tensor (sized for the profile's largest batch), one CUDA
  stream, pinned host buffers, and asynchronous copy → execute → copy on that stream. Memory
  and stream come from pycuda where it is installed, else from PyTorch's CUDA tensors.
"""

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .common import BackendUnavailable, check_batch, run_in_fixed_batches
from ..image import IMAGE_SUFFIXES
from .engine_cache import PRECISIONS, EngineCache, EngineKey, InputProfile, images_sha256, onnx_io

__all__ = ["TensorRTBackend", "BuiltEngine", "build_engine", "engine_cache_for", "import_tensorrt",
           "cuda_runtime", "engine_io",
           "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

#: a 2048×1024 ESPNetv2 build fits in far less; TensorRT takes only what tactics need
DEFAULT_WORKSPACE_GB = 2.0


def import_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable saying what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            "backend 'tensorrt' needs NVIDIA TensorRT's Python package (8.6 or 10.x): "
            "pip install tensorrt (or the wheel shipped with JetPack / the TensorRT tar file), "
            "plus pycuda (pip install pycuda) or PyTorch with CUDA for device buffers") from None
    major = int(trt.__version__.split(".")[0])
    if major < 8 or (major == 8 and int(trt.__version__.split(".")[1]) < 6):
        raise BackendUnavailable(f"backend 'tensorrt' needs TensorRT >= 8.6 (named-tensor API), "
                                 f"found {trt.__version__}")
    return trt


# --- CUDA memory and stream: pycuda, or PyTorch's CUDA tensors --------------------------------


class _PyCudaRuntime:
    """Device buffers, pinned host arrays and a stream from pycuda (primary context of the GPU)."""

    kind = "pycuda"

    def __init__(self, index: int):
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.gpu = cuda.Device(index)
        self.context = self.gpu.retain_primary_context()
        with self.active():
            self.stream = cuda.Stream()

    @contextlib.contextmanager
    def active(self):
        """pycuda contexts are per thread: make ours current for the block (ROS callbacks move)."""
        self.context.push()
        try:
            yield
        finally:
            self.context.pop()

    def identity(self) -> Tuple[str, str]:
        major, minor = self.gpu.compute_capability()
        return self.gpu.name(), f"{major}.{minor}"

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def device_array(self, shape, dtype):
        buffer = self.cuda.mem_alloc(max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
        return buffer, int(buffer)

    def pinned_array(self, shape, dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(tuple(shape), dtype)

    def to_device(self, device, host: np.ndarray):
        self.cuda.memcpy_htod_async(device, host, self.stream)

    def to_host(self, host: np.ndarray, device):
        self.cuda.memcpy_dtoh_async(host, device, self.stream)

    def synchronize(self):
        self.stream.synchronize()

    def peak_memory(self) -> Optional[int]:
        return None


class _TorchCudaRuntime:
    """The same from PyTorch: CUDA tensors as device buffers, pinned CPU tensors, a torch stream."""

    kind = "torch"

    def __init__(self, index: int):
        import torch

        self.torch = torch
        self.device = torch.device("cuda", index)
        self.stream = torch.cuda.Stream(self.device)

    @contextlib.contextmanager
    def active(self):
        with self.torch.cuda.device(self.device), self.torch.cuda.stream(self.stream):
            yield

    def identity(self) -> Tuple[str, str]:
        major, minor = self.torch.cuda.get_device_capability(self.device)
        return self.torch.cuda.get_device_name(self.device), f"{major}.{minor}"

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def _dtype(self, dtype):
        return self.torch.from_numpy(np.empty(0, dtype)).dtype

    def device_array(self, shape, dtype):
        tensor = self.torch.empty(tuple(shape), dtype=self._dtype(dtype), device=self.device)
        return tensor, tensor.data_ptr()

    def pinned_array(self, shape, dtype) -> np.ndarray:
        return self.torch.empty(tuple(shape), dtype=self._dtype(dtype), pin_memory=True).numpy()

    def to_device(self, device, host: np.ndarray):
        device[: len(host)].copy_(self.torch.from_numpy(host), non_blocking=True)

    def to_host(self, host: np.ndarray, device):
        self.torch.from_numpy(host).copy_(device[: len(host)], non_blocking=True)

    def synchronize(self):
        self.stream.synchronize()

    def peak_memory(self) -> Optional[int]:
        return self.torch.cuda.max_memory_allocated(self.device)


def cuda_runtime(device: str = "cuda:0"):
    """pycuda if installed, else PyTorch with CUDA; BackendUnavailable if neither can reach a GPU."""
    if not device.startswith("cuda"):
        raise ValueError(f"backend 'tensorrt' runs on a CUDA device, got device {device!r}")
    _, _, index = device.partition(":")
    index = int(index) if index else 0
    try:
        return _PyCudaRuntime(index)
    except ImportError:
        pass
    except Exception as exc:  # pycuda present but no usable GPU/driver
        raise BackendUnavailable(f"pycuda could not open GPU {index}: {exc}") from None
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return _TorchCudaRuntime(index)
    raise BackendUnavailable("backend 'tensorrt' needs pycuda (pip install pycuda) or PyTorch with "
                             "CUDA for device buffers and streams, and a visible NVIDIA GPU")


# --- building ---------------------------------------------------------------------------------


def engine_io(engine) -> Dict[str, Dict[str, object]]:
    """The engine's I/O tensors as an engine_cache IODescription."""
    trt = import_tensorrt()
    io = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        io[name] = {"mode": mode, "shape": list(engine.get_tensor_shape(name)),
                    "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name}
    return io


def _calibration_images(folder) -> List[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in calibration folder {folder}")
    return files


def _entropy_calibrator(trt, runtime, files: Sequence[Path], input_shape, cache_path: Path):
    """An ``IInt8EntropyCalibrator2`` feeding the images, resized to the network size, as uint8."""
    import cv2

    from ..image import resize_rgb

    batch, height, width, _ = input_shape

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.files = list(files)
            self.position = 0
            self.device, self.pointer = runtime.device_array(input_shape, np.uint8)
            self.host = runtime.pinned_array(input_shape, np.uint8)

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            if self.position >= len(self.files):
                return None
            for i in range(batch):  # wrap around so that every batch is full
                path = self.files[(self.position + i) % len(self.files)]
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise ValueError(f"not a readable image: {path}")
                self.host[i] = resize_rgb(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (width, height))
            self.position += batch
            runtime.to_device(self.device, self.host)
            runtime.synchronize()
            return [self.pointer]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()


def _build_serialized(trt, onnx_path: Path, key: EngineKey, *, workspace_bytes: int,
                      timing_cache_path: Path, calibrator=None) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT 10 networks are always explicit-batch (the flag is deprecated); 8.6 needs it.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall back to fp16
    profile = builder.create_optimization_profile()
    dynamic = any(p.min != p.max for p in key.profile)
    for p in key.profile:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    if dynamic:
        config.add_optimization_profile(profile)
    if key.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        if dynamic:
            config.set_calibration_profile(profile)
    previous = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(previous)
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        log.warning("timing cache %s does not fit this GPU/TensorRT; starting a new one",
                    timing_cache_path)
        timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} "
                           f"({key.precision}); see the TensorRT log above (raise --workspace "
                           "if it mentions memory)")
    timing_cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def _input_profile(onnx_path: Path, batch: Optional[Tuple[int, int, int]]) -> Tuple[InputProfile, ...]:
    """The optimisation profile of the ONNX input: its static batch, or ``batch`` (min, opt, max)."""
    inputs = [(name, spec) for name, spec in onnx_io(onnx_path).items() if spec["mode"] == "input"]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path}: expected one image input, found {[n for n, _ in inputs]}")
    name, spec = inputs[0]
    n, *frame = spec["shape"]
    if any(d < 0 for d in frame):
        raise ValueError(f"{onnx_path}: the image size must be static, got {spec['shape']}")
    if n >= 0:
        if batch is not None and tuple(batch) != (n, n, n):
            raise ValueError(f"{onnx_path} has a static batch of {n}; export it with "
                             f"--dynamic-batch for a batch range {tuple(batch)}")
        return (InputProfile.for_batches(name, frame, n, n, n),)
    low, opt, high = batch if batch is not None else (1, 1, 1)
    if low < 1:
        raise ValueError(f"batch sizes must be >= 1, got {tuple(batch)}")
    return (InputProfile.for_batches(name, frame, low, opt, high),)


def engine_cache_for(onnx_path, device: str = "cuda:0", precision: str = "fp16", *,
                     batch: Optional[Tuple[int, int, int]] = None, calibration_dir=None,
                     cache_dir=None, runtime=None) -> EngineCache:
    """The :class:`EngineCache` (key and file names) for these settings on this GPU and TensorRT."""
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and calibration_dir is None:
        raise ValueError("int8 needs a folder of calibration images (--calibration-images DIR)")
    from ..export import file_sha256

    runtime = runtime or cuda_runtime(device)
    gpu_name, capability = runtime.identity()
    files = _calibration_images(calibration_dir) if precision == "int8" else []
    key = EngineKey(onnx_sha256=file_sha256(onnx_path), tensorrt_version=trt.__version__,
                    gpu_name=gpu_name, compute_capability=capability, precision=precision,
                    profile=_input_profile(onnx_path, batch),
                    calibration_sha256=images_sha256(files) if files else "")
    return EngineCache(onnx_path, key, cache_dir)


@dataclass
class BuiltEngine:
    engine: object  # trt.ICudaEngine
    cache: EngineCache
    built: bool  # False: loaded from the cache
    trt_runtime: object  # the trt.Runtime that deserialised it; must outlive the engine


def build_engine(onnx_path, device: str = "cuda:0", precision: str = "fp16", *,
                 batch: Optional[Tuple[int, int, int]] = None,
                 workspace_gb: float = DEFAULT_WORKSPACE_GB, calibration_dir=None,
                 cache_dir=None, force: bool = False, runtime=None) -> BuiltEngine:
    """Load the cached engine for these settings or build it → :class:`BuiltEngine`.

    ``batch`` = (min, opt, max) for a dynamic-batch ONNX file (default (1, 1, 1)); a static
    file uses its own batch. int8 needs ``calibration_dir`` (a folder of images). The engine,
    its JSON sidecar, the timing cache and the int8 calibration cache go to ``cache_dir``
    (default: beside the ONNX file). This is also the build-only entry point for CI/vehicles.
    """
    trt = import_tensorrt()
    if workspace_gb <= 0:
        raise ValueError(f"workspace must be > 0 GB, got {workspace_gb}")
    runtime = runtime or cuda_runtime(device)
    cache = engine_cache_for(onnx_path, device, precision, batch=batch,
                             calibration_dir=calibration_dir, cache_dir=cache_dir, runtime=runtime)
    key, onnx_path = cache.key, cache.onnx_path
    folder = cache.engine_path.parent
    timing_cache = folder / f"{onnx_path.stem}.trt{trt.__version__}.timing-cache"

    def build():
        with runtime.active():
            calibrator = None
            if precision == "int8":
                files = _calibration_images(calibration_dir)
                calib_cache = folder / (f"{onnx_path.stem}.{key.calibration_sha256[:12]}"
                                        ".int8-calibration")
                calibrator = _entropy_calibrator(trt, runtime, files, key.profile[0].opt, calib_cache)
            return _build_serialized(trt, onnx_path, key, workspace_bytes=int(workspace_gb * (1 << 30)),
                                     timing_cache_path=timing_cache, calibrator=calibrator)

    trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

    def deserialize(data: bytes):
        with runtime.active():
            return trt_runtime.deserialize_cuda_engine(data)

    engine, built = cache.load_or_build(build, deserialize, engine_io, force=force)
    return BuiltEngine(engine, cache, built, trt_runtime)


# --- running ----------------------------------------------------------------------------------


class TensorRTBackend:
    """Run the exported model with TensorRT: ``backend(batch) → (labels, anomaly)``.

    Arguments as :func:`build_engine`: the engine is taken from the cache beside ``onnx_path``
    or built on first use (minutes). Batches larger than the profile's maximum run in chunks.
    """

    name = "tensorrt"

    def __init__(self, onnx_path, device: str = "cuda:0", precision: str = "fp16", *,
                 batch: Optional[Tuple[int, int, int]] = None,
                 workspace_gb: float = DEFAULT_WORKSPACE_GB, calibration_dir=None, cache_dir=None,
                 force_rebuild: bool = False):
        self.trt = import_tensorrt()
        self.runtime = cuda_runtime(device)
        self.device, self.precision = device, precision
        self.built = build_engine(onnx_path, device, precision, batch=batch,
                                  workspace_gb=workspace_gb, calibration_dir=calibration_dir,
                                  cache_dir=cache_dir, force=force_rebuild, runtime=self.runtime)
        self.engine, self.cache = self.built.engine, self.built.cache
        (profile,) = self.cache.key.profile
        self.input_name = profile.name
        self.size = (profile.max[2], profile.max[1])
        self.min_batch, self.max_batch = profile.min[0], profile.max[0]
        self.fixed_batch = self.max_batch if self.min_batch == self.max_batch else None
        io = engine_io(self.engine)
        self.output_names = ["labels", "anomaly"]
        with self.runtime.active():
            self.context = self.engine.create_execution_context()
            self.buffers, self.host = {}, {}
            for name, spec in io.items():
                # Dynamic dims are the batch only: size every buffer for the largest batch.
                shape = [self.max_batch if d < 0 else d for d in spec["shape"]]
                buffer, pointer = self.runtime.device_array(shape, spec["dtype"])
                self.buffers[name] = buffer
                self.context.set_tensor_address(name, pointer)
                if name == self.input_name or name in self.output_names:
                    self.host[name] = self.runtime.pinned_array(shape, spec["dtype"])
        self._batch = 0

    def describe(self) -> str:
        return (f"TensorRT {self.trt.__version__} {self.precision} ({self.cache.engine_path.name}, "
                f"buffers via {self.runtime.kind})")

    def upload(self, batch: np.ndarray):
        """Host → pinned → device, asynchronously on the stream."""
        n = len(batch)
        if not self.min_batch <= n <= self.max_batch:
            raise ValueError(f"batch of {n} outside the engine's profile "
                             f"{self.min_batch}..{self.max_batch}")
        with self.runtime.active():
            host = self.host[self.input_name][:n]
            np.copyto(host, batch)
            self.runtime.to_device(self.buffers[self.input_name], host)
            self.context.set_input_shape(self.input_name, batch.shape)
        self._batch = n
        return n

    def run(self, n):
        """Enqueue the engine on the stream (normalisation … smoothing, all on the GPU)."""
        with self.runtime.active():
            if not self.context.execute_async_v3(self.runtime.stream_handle):
                raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log")
        return n

    def download(self, n) -> Tuple[np.ndarray, np.ndarray]:
        """Device → pinned host, then wait for the stream; returns copies the caller may keep."""
        with self.runtime.active():
            for name in self.output_names:
                self.runtime.to_host(self.host[name][:n], self.buffers[name])
            self.runtime.synchronize()
        labels, anomaly = (self.host[name][:n] for name in self.output_names)
        # copies: the pinned buffers are reused by the next batch
        return labels.astype(np.uint8), anomaly.astype(np.float32)

    def synchronize(self):
        with self.runtime.active():
            self.runtime.synchronize()

    def peak_device_memory(self) -> Optional[int]:
        return self.runtime.peak_memory()

    def _run_fixed(self, batch):
        return self.download(self.run(self.upload(batch)))

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        batch = check_batch(batch, self.size)
        if self.fixed_batch is None and len(batch) > self.max_batch:
            parts = [self._run_fixed(batch[i:i + self.max_batch])
                     for i in range(0, len(batch), self.max_batch)]
            return tuple(np.concatenate(p) for p in zip(*parts))
        if self.fixed_batch is None and len(batch) < self.min_batch:
            return run_in_fixed_batches(self._run_fixed, batch, self.min_batch)
        return run_in_fixed_batches(self._run_fixed, batch, self.fixed_batch)
