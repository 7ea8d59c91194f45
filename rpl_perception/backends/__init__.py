"""Inference backends: each runs an :class:`~rpl_perception.models.AnomalyModel` on a batch.

A backend is called with a (B, H, W, 3) uint8 RGB numpy batch at the network size and returns
``(labels, anomaly)`` numpy arrays of shapes (B, H, W), uint8 and float32 (anomaly (B, S, H, W)
for a model giving S scores). Each also has ``name``, ``device``, ``describe()``, and for the
benchmark the stages ``upload(batch)``, ``run(inputs)``, ``download(outputs)``,
``synchronize()`` and ``peak_device_memory()``.

- ``torch``: PyTorch eager (:class:`TorchBackend`), CPU or CUDA (fp16 autocast, channels_last).
- ``onnxruntime``: the exported graph on ONNX Runtime (:class:`OnnxRuntimeBackend`), CPU or CUDA.
- ``tensorrt``: the exported graph as a cached TensorRT engine (:class:`TensorRTBackend`).

:class:`DeploymentSpec` says which one, how and where its files are; :func:`create_backend`
builds it by name, or picks the fastest that works with ``auto``.
"""

import importlib.util
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from .common import BackendUnavailable, describe_exception
from .deployment import BACKENDS, DEFAULT_WORKSPACE_GB, PRECISIONS, DeploymentSpec
from .onnx_cache import default_cache_dir, exported_onnx
from .onnxruntime_backend import OnnxRuntimeBackend, onnxruntime_providers
from .tensorrt_backend import TensorRTBackend, import_tensorrt
from .torch_backend import TorchBackend

__all__ = ["BACKENDS", "PRECISIONS", "AUTO_ORDER", "BackendUnavailable", "DeploymentSpec",
           "TorchBackend", "OnnxRuntimeBackend", "TensorRTBackend", "create_backend",
           "default_cache_dir", "exported_onnx"]

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


def _build(name: str, device: str, source, spec: DeploymentSpec, size):
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
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def create_backend(name: str = "auto", model: Union[object, str, Path, None] = None, *,
                   device: str = "auto", precision: str = "fp32",
                   size: Optional[Tuple[int, int]] = None,
                   batch: Union[int, Sequence[int]] = 1, onnx_path=None, cache_dir=None,
                   engine_path=None, calibration_dir=None,
                   workspace_gb: float = DEFAULT_WORKSPACE_GB, threads: Optional[int] = None):
    """Build the backend ``name`` for ``model`` and log what was chosen and why.

    Args:
        name: 'auto', 'tensorrt', 'onnxruntime' or 'torch'. 'auto' tries, fastest first,
            TensorRT (GPU), ONNX Runtime (GPU), PyTorch (GPU), ONNX Runtime (CPU), PyTorch
            (CPU), and takes the first that starts: any failure of a candidate (a missing
            package, a parse or build error, a read-only engine folder, an unsupported TensorRT)
            skips it, and the reasons are logged. A named backend fails with its error.
        model: an :class:`~rpl_perception.segmenter.AnomalySegmenter` (the usual case), an
            :class:`~rpl_perception.models.AnomalyModel` with ``size``, or the path of an
            exported ``.onnx`` file (onnxruntime / tensorrt only).
        device: 'auto', 'cpu' or 'cuda[:N]'; 'auto' allows both, 'cpu'/'cuda' restrict the
            candidates to that device.
        precision: 'fp32', 'fp16' or 'int8' for the network; scores are float32 in every case.
            fp16 applies to PyTorch on CUDA (autocast) and TensorRT; ONNX Runtime runs the fp32
            graph. int8 is TensorRT only (built with calibration images, or already built).
        size: network (width, height); only needed with a bare AnomalyModel.
        batch: the most frames per run (dynamic batch 1..N), or (min, opt, max).
        onnx_path: where the exported graph is or goes (default: a file in ``cache_dir``
            named by the weights and settings; TensorRT engines are cached beside it).
        cache_dir: default $XDG_CACHE_HOME/rpl_perception (~/.cache/rpl_perception).
        engine_path: a TensorRT engine file to load, or to build there (default: beside the ONNX).
        calibration_dir: images for an int8 build.
        threads: ONNX Runtime CPU threads (default: one per CPU available to the process).

    Returns a callable backend (see the module docstring), with ``skipped``: the candidates
    'auto' passed over and why. Raises BackendUnavailable when no candidate can run.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if not (device == "auto" or device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if model is None:
        raise ValueError("create_backend needs a model (AnomalySegmenter, AnomalyModel or "
                         ".onnx path)")
    batch_range = (1, batch, batch) if isinstance(batch, int) else tuple(batch)
    spec = DeploymentSpec(backend=name, device=device, precision=precision, batch=batch_range,
                          onnx_path=None if onnx_path is None else Path(onnx_path),
                          cache_dir=None if cache_dir is None else Path(cache_dir),
                          engine_path=None if engine_path is None else Path(engine_path),
                          calibration_dir=None if calibration_dir is None else Path(calibration_dir),
                          workspace_gb=workspace_gb, threads=threads)
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
