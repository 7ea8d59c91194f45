"""Device buffers, pinned host arrays and a CUDA stream for the TensorRT backend: pycuda where it
is installed, else PyTorch's CUDA tensors. No TensorRT import here."""

import contextlib
from typing import Tuple

import numpy as np

from .common import BackendUnavailable

__all__ = ["cuda_runtime"]


class _PyCudaRuntime:
    """Device buffers, pinned host arrays and a stream from pycuda (primary context of the GPU)."""

    kind = "pycuda"
    allocated_bytes = 0  # device buffers allocated through device_array

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
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self.allocated_bytes += nbytes
        buffer = self.cuda.mem_alloc(nbytes)
        return buffer, int(buffer)

    def pinned_array(self, shape, dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(tuple(shape), dtype)

    def to_device(self, device, host: np.ndarray):
        self.cuda.memcpy_htod_async(device, host, self.stream)

    def to_host(self, host: np.ndarray, device):
        self.cuda.memcpy_dtoh_async(host, device, self.stream)

    def synchronize(self):
        self.stream.synchronize()


class _TorchCudaRuntime:
    """The same from PyTorch: CUDA tensors as device buffers, pinned CPU tensors, a torch stream."""

    kind = "torch"
    allocated_bytes = 0  # device buffers allocated through device_array

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
        self.allocated_bytes += tensor.numel() * tensor.element_size()
        return tensor, tensor.data_ptr()

    def pinned_array(self, shape, dtype) -> np.ndarray:
        return self.torch.empty(tuple(shape), dtype=self._dtype(dtype), pin_memory=True).numpy()

    def to_device(self, device, host: np.ndarray):
        device[: len(host)].copy_(self.torch.from_numpy(host), non_blocking=True)

    def to_host(self, host: np.ndarray, device):
        self.torch.from_numpy(host).copy_(device[: len(host)], non_blocking=True)

    def synchronize(self):
        self.stream.synchronize()



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
