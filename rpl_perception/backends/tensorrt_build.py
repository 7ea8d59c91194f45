"""Building TensorRT engines from the exported ONNX file (TensorRT 8.6 – 10.x Python API).

ONNX parser → builder config with a workspace limit and an optimisation profile for the batch
range, a timing cache beside the model (written atomically: several nodes may share it), then
:class:`~rpl_perception.backends.engine_cache.EngineCache` stores and validates the engine.

Precision, with scores always in float32:

- fp32: a strongly typed network on TensorRT 10 (types come from the graph, which is float32
  throughout), the way TensorRT 11 builds every network;
- fp16 / int8: TensorRT 10's weakly typed mode (``BuilderFlag.FP16`` / ``INT8``, int8 with entropy
  calibration on a folder of images) with every layer of the scoring head (ONNX nodes
  ``/scoring/…``, see :class:`~rpl_perception.models.AnomalyScoring`) pinned to float32 under
  ``OBEY_PRECISION_CONSTRAINTS``: the logits are cast to float32 before the score and smoothing.

TensorRT is imported lazily (``import tensorrt as trt`` in each function, so that a type checker
with ``tensorrt-stubs`` sees every call: ``test/test_tensorrt_types.py``). TensorRT 11 removed
the weakly typed API used for fp16 / int8 and is refused by :func:`import_tensorrt` until it is
supported.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..image import IMAGE_SUFFIXES
from ..models.anomaly import SCORING_SCOPE
from .common import DEFAULT_WORKSPACE_GB, PRECISIONS, BackendUnavailable
from .cuda_runtime import cuda_runtime
from .engine_cache import EngineCache, EngineKey, InputProfile, images_sha256, onnx_io, write_atomic

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["BuiltEngine", "build_engine", "engine_cache_for", "engine_io", "import_tensorrt", "tensorrt_available",
           "trt_logger", "SUPPORTED_TENSORRT", "DEFAULT_WORKSPACE_GB"]

log = logging.getLogger(__name__)

#: the TensorRT major versions this module is written for (8.6 and later 8.x, 10.x)
SUPPORTED_TENSORRT = "8.6 – 10.x"


def _version(text: str) -> Tuple[int, int]:
    """(major, minor) of a version string such as '10.13.0.35'."""
    parts = text.split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def import_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailable saying what to install or why not this one."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(
            "backend 'tensorrt' needs NVIDIA TensorRT's Python package (8.6 or 10.x): "
            "pip install tensorrt (or the wheel shipped with JetPack / the TensorRT tar file), "
            "plus pycuda (pip install pycuda) or PyTorch with CUDA for device buffers") from None
    version = getattr(tensorrt, "__version__", None)
    if not isinstance(version, str):  # e.g. only the type stubs (tensorrt-stubs) are installed
        where = getattr(tensorrt, "__path__", None) or getattr(tensorrt, "__file__", "?")
        raise BackendUnavailable(f"backend 'tensorrt' needs NVIDIA TensorRT; the 'tensorrt' found at "
                                 f"{list(where) if where else '?'} is not it (type stubs only?): "
                                 "pip install tensorrt")
    try:
        major, minor = _version(version)
    except ValueError:
        raise BackendUnavailable(f"cannot read TensorRT's version {version!r}") from None
    if (major, minor) < (8, 6):
        raise BackendUnavailable(f"backend 'tensorrt' needs TensorRT >= 8.6 (named-tensor API), "
                                 f"found {version}")
    if major >= 11:
        raise BackendUnavailable(
            f"TensorRT {version} is not supported yet: TensorRT 11 removed the weakly typed API "
            "(BuilderFlag.FP16/INT8, int8 calibrators) that fp16/int8 builds use here, and needs "
            f"strongly typed networks throughout. Use TensorRT {SUPPORTED_TENSORRT}, or backend "
            "onnxruntime")
    return tensorrt


def tensorrt_available() -> bool:
    """Whether a supported NVIDIA TensorRT imports here (not just its type stubs)."""
    try:
        import_tensorrt()
    except BackendUnavailable:
        return False
    return True


_LOGGERS: Dict[int, object] = {}


def trt_logger() -> "trt.ILogger":
    """The one TensorRT logger of this process (builder, parser and runtime share it)."""
    import tensorrt as trt

    logger = _LOGGERS.get(id(trt))
    if logger is None:
        logger = _LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return logger  # type: ignore[return-value]


def engine_io(engine: "trt.ICudaEngine") -> Dict[str, Dict[str, object]]:
    """The engine's I/O tensors as an engine_cache IODescription."""
    import tensorrt as trt

    io: Dict[str, Dict[str, object]] = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        shape = engine.get_tensor_shape(name)
        io[name] = {"mode": mode, "shape": [int(shape[i]) for i in range(len(shape))],
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


def _entropy_calibrator(runtime, files: Sequence[Path], input_shape, cache_path: Path):
    """An ``IInt8EntropyCalibrator2`` feeding the images, resized to the network size, as uint8."""
    import tensorrt as trt

    from ..image import read_rgb, resize_rgb

    batch, height, width, _ = input_shape

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.files = list(files)
            self.position = 0
            self.device, self.pointer = runtime.device_array(input_shape, np.uint8)
            self.host = runtime.pinned_array(input_shape, np.uint8)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: List[str]):
            if self.position >= len(self.files):
                return None
            for i in range(batch):  # wrap around so that every batch is full
                path = self.files[(self.position + i) % len(self.files)]
                self.host[i] = resize_rgb(read_rgb(path), (width, height))
            self.position += batch
            runtime.to_device(self.device, self.host)
            runtime.synchronize()
            return [self.pointer]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            write_atomic(cache_path, bytes(cache))

    return EntropyCalibrator()


def _pin_scoring_to_float32(network: "trt.INetworkDefinition", config: "trt.IBuilderConfig") -> int:
    """Run every scoring layer (and produce its float outputs) in float32 → the count pinned."""
    import tensorrt as trt

    prefix = f"/{SCORING_SCOPE}/"
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not layer.name.startswith(prefix):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    if not pinned:
        raise RuntimeError(f"no scoring layers ({prefix}…) in the network: reduced precision would "
                           "compute the anomaly score in half precision; re-export the ONNX file "
                           "with this version of rpl_perception")
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned


def _build_serialized(onnx_path: Path, key: EngineKey, *, workspace_bytes: int,
                      timing_cache_path: Path, calibrator=None) -> bytes:
    import tensorrt as trt

    logger = trt_logger()
    builder = trt.Builder(logger)
    major, _ = _version(trt.__version__)
    strongly_typed = key.precision == "fp32" and major >= 10
    flags = 0
    if major < 10:  # 8.6 needs explicit batch; TensorRT 10 networks always are (flag deprecated)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall back to fp16
        pinned = _pin_scoring_to_float32(network, config)
        log.info("%s build: %d scoring layers pinned to float32", key.precision, pinned)
    profile = builder.create_optimization_profile()
    dynamic = any(p.min != p.max for p in key.profile)
    for p in key.profile:
        profile.set_shape(p.name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
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
    write_atomic(timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def _input_profile(onnx_path: Path, batch: Optional[Sequence[int]]) -> Tuple[InputProfile, ...]:
    """The optimisation profile of the ONNX input: its static batch, or ``batch`` (min, opt, max)."""
    inputs = [(name, spec) for name, spec in onnx_io(onnx_path).items() if spec["mode"] == "input"]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path}: expected one image input, found {[n for n, _ in inputs]}")
    name, spec = inputs[0]
    shape: List[int] = list(spec["shape"])  # type: ignore[call-overload]
    n, frame = shape[0], shape[1:]
    if any(d < 0 for d in frame):
        raise ValueError(f"{onnx_path}: the image size must be static, got {spec['shape']}")
    if n >= 0:
        if batch is not None and tuple(batch) != (n, n, n):
            raise ValueError(f"{onnx_path} has a static batch of {n}; export it with "
                             f"--dynamic-batch for a batch range {tuple(batch)}")
        return (InputProfile.for_batches(name, frame, n, n, n),)
    low, opt, high = batch if batch is not None else (1, 1, 1)
    if low < 1:
        raise ValueError(f"batch sizes must be >= 1, got {tuple(batch or ())}")
    return (InputProfile.for_batches(name, frame, low, opt, high),)


def engine_cache_for(onnx_path, device: str = "cuda:0", precision: str = "fp32", *,
                     batch: Optional[Sequence[int]] = None, calibration_dir=None, cache_dir=None,
                     engine_path=None, runtime=None) -> EngineCache:
    """The :class:`EngineCache` (key and file names) for these settings on this GPU and TensorRT.

    An int8 key without ``calibration_dir`` accepts a cached engine of any calibration (loading
    needs no images); only a build does.
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from ..files import file_sha256

    runtime = runtime or cuda_runtime(device)
    gpu_name, capability = runtime.identity()
    calibration: Optional[str] = ""
    if precision == "int8":
        calibration = (images_sha256(_calibration_images(calibration_dir))
                       if calibration_dir is not None else None)
    key = EngineKey(onnx_sha256=file_sha256(onnx_path), tensorrt_version=trt.__version__,
                    gpu_name=gpu_name, compute_capability=capability, precision=precision,
                    profile=_input_profile(onnx_path, batch), calibration_sha256=calibration)
    return EngineCache(onnx_path, key, cache_dir, engine_path)


@dataclass
class BuiltEngine:
    engine: "trt.ICudaEngine"
    cache: EngineCache
    built: bool  # False: loaded from the cache
    trt_runtime: "trt.Runtime"  # the runtime that deserialised it; must outlive the engine
    engine_bytes: int  # size of the serialized engine (≈ its weights on the GPU)


def build_engine(onnx_path, device: str = "cuda:0", precision: str = "fp32", *,
                 batch: Optional[Sequence[int]] = None,
                 workspace_gb: float = DEFAULT_WORKSPACE_GB, calibration_dir=None,
                 cache_dir=None, engine_path=None, force: bool = False, runtime=None) -> BuiltEngine:
    """Load the cached engine for these settings or build it → :class:`BuiltEngine`.

    ``batch`` = (min, opt, max) for a dynamic-batch ONNX file (default (1, 1, 1)); a static
    file uses its own batch. An int8 build needs ``calibration_dir`` (a folder of images); an
    int8 engine that is already built loads without it. The engine, its JSON sidecar, the timing
    cache and the int8 calibration cache go to ``engine_path``'s folder or ``cache_dir``
    (default: beside the ONNX file). This is also the build-only entry point for CI/vehicles.
    """
    import_tensorrt()
    import tensorrt as trt

    if workspace_gb <= 0:
        raise ValueError(f"workspace must be > 0 GB, got {workspace_gb}")
    runtime = runtime or cuda_runtime(device)
    cache = engine_cache_for(onnx_path, device, precision, batch=batch,
                             calibration_dir=calibration_dir, cache_dir=cache_dir,
                             engine_path=engine_path, runtime=runtime)
    key, onnx_path = cache.key, cache.onnx_path
    folder = cache.engine_path.parent
    timing_cache = folder / f"{onnx_path.stem}.trt{trt.__version__}.timing-cache"

    def build() -> bytes:
        with runtime.active():
            calibrator = None
            if precision == "int8":
                files = _calibration_images(calibration_dir)
                calib_cache = folder / (f"{onnx_path.stem}.{(key.calibration_sha256 or '')[:12]}"
                                        ".int8-calibration")
                calibrator = _entropy_calibrator(runtime, files, key.profile[0].opt, calib_cache)
            return _build_serialized(onnx_path, key, workspace_bytes=int(workspace_gb * (1 << 30)),
                                     timing_cache_path=timing_cache, calibrator=calibrator)

    trt_runtime = trt.Runtime(trt_logger())

    def deserialize(data: bytes):
        with runtime.active():
            return trt_runtime.deserialize_cuda_engine(data)

    cannot_build = None
    if precision == "int8" and calibration_dir is None:
        cannot_build = ("an int8 build needs calibration images: rpl-perception build-engine "
                        "--precision int8 --calibration-images DIR (or the calibration_images parameter)")
    engine, built = cache.load_or_build(build, deserialize, engine_io, force=force, can_build=cannot_build)
    size = cache.engine_path.stat().st_size if cache.engine_path.is_file() else 0
    return BuiltEngine(engine, cache, built, trt_runtime, size)  # type: ignore[arg-type]
