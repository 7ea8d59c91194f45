"""A stand-in for NVIDIA TensorRT's Python module and a numpy "GPU", for tests without either.

It implements the slice of the TensorRT 10 API the backend uses (``test_tensorrt_types.py``
checks those calls against the real API's type stubs), records what the code asks of it
(network flags, builder flags, layer precisions, tensor addresses, input shapes, executions)
and can be told to fail in each way a real build or run can. The "engine" computes a simple,
checkable function of its input: labels = red % 19, anomaly = green / 255 (+ blue / 255 per
extra score channel).
"""

import contextlib
import json
import types
from typing import Dict, List, Optional

import numpy as np


class _Enum:
    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    def __repr__(self):
        return self.name


class DataType:
    FLOAT = _Enum("FLOAT", 0)
    HALF = _Enum("HALF", 1)
    INT8 = _Enum("INT8", 2)
    INT32 = _Enum("INT32", 3)
    UINT8 = _Enum("UINT8", 5)
    INT64 = _Enum("INT64", 8)


_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
          DataType.INT32: np.int32, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
_FROM_NAME = {np.dtype(v).name: k for k, v in _NUMPY.items()}


class FakeGpu:
    """Device memory as numpy arrays addressed by fake pointers; the CUDA runtime interface."""

    kind = "fake"

    def __init__(self, name: str = "Fake GPU", capability: str = "8.6"):
        self.memory: Dict[int, np.ndarray] = {}
        self.allocated_bytes = 0
        self.stream_handle = 7
        self.name, self.capability = name, capability
        self._next = 0x1000

    @contextlib.contextmanager
    def active(self):
        yield

    def identity(self):
        return self.name, self.capability

    def device_array(self, shape, dtype):
        array = np.zeros(tuple(shape), dtype)
        pointer = self._next
        self._next += 0x1000
        self.memory[pointer] = array
        self.allocated_bytes += array.nbytes
        return array, pointer

    def pinned_array(self, shape, dtype):
        return np.zeros(tuple(shape), dtype)

    def to_device(self, device, host):
        device[: len(host)] = host

    def to_host(self, host, device):
        host[...] = device[: len(host)]

    def synchronize(self):
        pass


def make_tensorrt(gpu: FakeGpu, version: str = "10.13.0.35", **failures) -> types.ModuleType:
    """A fake ``tensorrt`` module bound to ``gpu``. ``failures``: parse=True (parser errors),
    build_none=True (builder returns None), builder_raises=Exception(...), execute_false=True,
    input_shape_false=True, device_memory=int."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.log = []  # (call, details) in order
    trt.loggers = 0
    trt.DataType = DataType
    trt.float32, trt.float16, trt.uint8 = DataType.FLOAT, DataType.HALF, DataType.UINT8
    trt.nptype = lambda dtype: _NUMPY[dtype]
    trt.Dims = tuple
    trt.TensorIOMode = types.SimpleNamespace(INPUT=_Enum("INPUT", 1), OUTPUT=_Enum("OUTPUT", 2))
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(
        EXPLICIT_BATCH=_Enum("EXPLICIT_BATCH", 0), STRONGLY_TYPED=_Enum("STRONGLY_TYPED", 1))
    trt.BuilderFlag = types.SimpleNamespace(FP16=_Enum("FP16", 0), INT8=_Enum("INT8", 1),
                                            OBEY_PRECISION_CONSTRAINTS=_Enum("OBEY_PRECISION_CONSTRAINTS", 9))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=_Enum("WORKSPACE", 0))

    class Logger:
        WARNING = _Enum("WARNING", 2)

        def __init__(self, severity):
            trt.loggers += 1

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class Tensor:
        def __init__(self, dtype):
            self.dtype = dtype

    class Layer:
        def __init__(self, name: str, op: str):
            self.name = name
            self.precision = DataType.FLOAT
            self.precision_set = False
            integer = op in ("ArgMax", "Cast", "Shape")
            self._outputs = [Tensor(DataType.INT64 if integer else DataType.FLOAT)]
            self.output_types: Dict[int, object] = {}

        @property
        def num_outputs(self):
            return len(self._outputs)

        def get_output(self, index):
            return self._outputs[index]

        def set_output_type(self, index, dtype):
            self.output_types[index] = dtype

        def __setattr__(self, key, value):
            if key == "precision" and "precision" in self.__dict__:
                self.__dict__["precision_set"] = True
            object.__setattr__(self, key, value)

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.layers: List[Layer] = []
            self.io = {}

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, index):
            return self.layers[index]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors: List[str] = []

        def parse_from_file(self, path):
            import onnx

            from rpl_perception.backends.engine_cache import onnx_io

            if failures.get("parse"):
                self.errors.append("In node 7 (importConv): UNSUPPORTED_NODE")
                return False
            graph = onnx.load(path, load_external_data=False).graph
            self.network.layers = [Layer(n.name, n.op_type) for n in graph.node]
            self.network.io = onnx_io(path)
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def serialize(self):
            return b"timing-cache"

    class Config:
        def __init__(self):
            self.flags = set()
            self.profiles: List[Profile] = []
            self.int8_calibrator = None
            self.calibration_profile = None

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, flag):
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return 0

        def set_calibration_profile(self, profile):
            self.calibration_profile = profile
            return True

        def create_timing_cache(self, data):
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return TimingCache()

    class Builder:
        def __init__(self, logger):
            if "builder_raises" in failures:
                raise failures["builder_raises"]

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.log.append(("build", {"network_flags": network.flags, "flags": sorted(config.flags),
                                      "pinned": [l.name for l in network.layers if l.precision_set],
                                      "output_types": {l.name: l.output_types for l in network.layers
                                                       if l.output_types}}))
            trt.last_network, trt.last_config = network, config
            if failures.get("build_none"):
                return None
            return json.dumps({"io": network.io}).encode()

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.addresses: Dict[str, int] = {}
            self.shapes: Dict[str, tuple] = {}

        def set_tensor_address(self, name, pointer):
            trt.log.append(("set_tensor_address", name))
            self.addresses[name] = pointer
            return True

        def set_input_shape(self, name, shape):
            trt.log.append(("set_input_shape", tuple(shape)))
            if failures.get("input_shape_false"):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def execute_async_v3(self, stream_handle):
            trt.log.append(("execute_async_v3", stream_handle))
            if failures.get("execute_false"):
                return False
            n = self.shapes["images"][0]
            images = gpu.memory[self.addresses["images"]][:n]
            gpu.memory[self.addresses["labels"]][:n] = images[..., 0] % 19
            anomaly = gpu.memory[self.addresses["anomaly"]]
            green = images[..., 1].astype(np.float32) / 255
            if anomaly.ndim == 4:  # one channel per score
                for k in range(anomaly.shape[1]):
                    anomaly[:n, k] = green + k * images[..., 2].astype(np.float32) / 255
            else:
                anomaly[:n] = green
            return True

    class Engine:
        def __init__(self, io):
            self.io = io
            self.names = list(io)
            self.device_memory_size_v2 = failures.get("device_memory", 1 << 20)

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if self.io[name]["mode"] == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return tuple(self.io[name]["shape"])

        def get_tensor_dtype(self, name):
            return _FROM_NAME[self.io[name]["dtype"]]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            trt.log.append(("deserialize", len(data)))
            try:
                return Engine(json.loads(bytes(data))["io"])
            except (ValueError, KeyError):
                return None

    for cls in (Logger, IInt8EntropyCalibrator2, OnnxParser, Builder, Runtime):
        setattr(trt, cls.__name__, cls)
    trt.ICudaEngine, trt.IExecutionContext = Engine, Context
    return trt


def calls(trt, name: Optional[str] = None):
    """The recorded calls (``name``: only those)."""
    return [c for c in trt.log if name is None or c[0] == name]
