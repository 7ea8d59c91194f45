"""Building a backend by name, or the fastest that works with ``auto`` (see :func:`build_backend`)."""

import importlib.util
import logging
from pathlib import Path
from typing import List

from .common import BackendUnavailable, describe_exception
from .onnxruntime_backend import OnnxRuntimeBackend, onnxruntime_providers
from .tensorrt_backend import TensorRTBackend, import_tensorrt
from .torch_backend import TorchBackend

__all__ = ["AUTO_ORDER", "build_backend"]

log = logging.getLogger(__name__)

#: what ``auto`` tries, fastest first: (backend, device kind)
AUTO_ORDER = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda"),
              ("onnxruntime", "cpu"), ("torch", "cpu"))


def _model_and_size(source, size):
    """(AnomalyModel, (w, h)) from an AnomalySegmenter, or an AnomalyModel plus ``size``."""
    from ..models import AnomalyModel

    if isinstance(source, AnomalyModel):
        if size is None:
            raise ValueError("an AnomalyModel needs size=(width, height) (an AnomalySegmenter "
                             "carries its own network_size)")
        return source, tuple(size)
    if hasattr(source, "model") and hasattr(source, "network_size"):  # AnomalySegmenter
        return source.model, tuple(size or source.network_size)
    raise ValueError("model must be an AnomalySegmenter, an AnomalyModel or a path to an exported "
                     f".onnx file, got {type(source).__name__}")


def _cuda_device(device: str) -> str:
    return device if device.startswith("cuda") else "cuda:0"


def _build(name: str, device: str, source, spec, size):
    """One backend on one device; BackendUnavailable when this machine cannot run it."""
    is_path = isinstance(source, (str, Path))
    if name == "torch":
        if is_path:
            raise ValueError("backend 'torch' needs the PyTorch model (an AnomalySegmenter or "
                             f"AnomalyModel), not the file {source}")
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch {torch.__version__} sees no CUDA GPU")
        if spec.precision == "int8":
            raise ValueError("backend 'torch' runs fp32 or fp16 (CUDA autocast), not int8")
        model, _ = _model_and_size(source, size)
        return TorchBackend(model, device=device, fp16=spec.precision == "fp16",
                            channels_last=device.startswith("cuda"))
    # what the runtime needs, checked before the export (slow, and useless where it cannot run)
    if name == "onnxruntime":
        onnxruntime_providers(device)
    elif name == "tensorrt":
        import_tensorrt()
    if is_path:
        path = Path(source)
    else:
        if importlib.util.find_spec("onnx") is None:
            raise BackendUnavailable(f"backend '{name}' runs the exported ONNX graph, and exporting needs the onnx "
                                     "package: pip install onnx (or this package's [onnx] extra)")
        model, model_size = _model_and_size(source, size)
        path = spec.onnx_file(model, model_size)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(path, device=device, threads=spec.threads, max_batch=spec.batch[2])
    if name == "tensorrt":
        return TensorRTBackend(path, device=_cuda_device(device), precision=spec.precision,
                               batch=spec.batch, workspace_gb=spec.workspace_gb,
                               calibration_dir=spec.calibration_dir, engine_path=spec.engine_file(path))
    raise ValueError(f"unknown backend {name!r}")


def build_backend(spec, model, size=None):
    """The backend ``spec`` (a validated :class:`~rpl_perception.backends.DeploymentSpec`) names for
    ``model``; see :meth:`~rpl_perception.backends.DeploymentSpec.create_backend`, its caller."""
    name, device, precision = spec.backend, spec.device, spec.precision
    kind = None if device == "auto" else ("cpu" if device == "cpu" else "cuda")
    if name == "auto":
        candidates = [(n, k) for n, k in AUTO_ORDER if kind in (None, k)]
        if isinstance(model, (str, Path)):
            candidates = [(n, k) for n, k in candidates if n != "torch"]
    else:
        candidates = [(name, k) for k in ("cuda", "cpu") if kind in (None, k)]
        if name == "tensorrt":
            candidates = [(name, "cuda")]
    skipped: List[str] = []
    for backend_name, backend_kind in candidates:
        if name == "auto" and precision == "int8" and backend_name != "tensorrt":
            skipped.append(f"{backend_name} ({backend_kind}): no int8")
            continue
        backend_device = backend_kind if kind is None else device
        if backend_kind == "cuda":
            backend_device = _cuda_device(backend_device)  # 'cuda' → 'cuda:0'; 'cuda:N' stays
        try:
            backend = _build(backend_name, backend_device, model, spec, size)
        except BackendUnavailable as exc:
            skipped.append(f"{backend_name} ({backend_kind}): {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - 'auto' must serve with whatever works
            if name != "auto":
                raise
            reason = describe_exception(exc)
            log.warning("backend auto: %s (%s) failed, trying the next: %s", backend_name,
                        backend_kind, reason)
            skipped.append(f"{backend_name} ({backend_kind}) failed: {reason}")
            continue
        backend.skipped = list(skipped)
        why = f"; skipped {' | '.join(skipped)}" if skipped else ""
        log.info("backend %s: %s on %s%s", name, backend.describe(), backend_device, why)
        return backend
    raise BackendUnavailable(f"no backend {name!r} can run here (device {device!r}): "
                             + " | ".join(skipped))
