"""Inference backends: each runs an :class:`~rpl_perception.models.AnomalyModel` on a batch.

A backend is called with a (B, H, W, 3) uint8 RGB numpy batch at the network size and returns
``(labels, anomaly)`` numpy arrays of shapes (B, H, W), uint8 and float32. Each also has
``name``, ``device``, ``describe()``, and for the benchmark the stages ``upload(batch)``,
``run(inputs)``, ``download(outputs)``, ``synchronize()`` and ``peak_device_memory()``.

- ``torch``: PyTorch eager (:class:`TorchBackend`), CPU or CUDA (fp16 autocast, channels_last).
- ``onnxruntime``: the exported graph on ONNX Runtime (:class:`OnnxRuntimeBackend`), CPU or CUDA.
- ``tensorrt``: the exported graph as a cached TensorRT engine (:class:`TensorRTBackend`).

:func:`create_backend` builds one by name, or picks the fastest available with ``auto``.
"""

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

from .common import BackendUnavailable
from .onnxruntime_backend import OnnxRuntimeBackend, onnxruntime_providers
from .tensorrt_backend import TensorRTBackend, import_tensorrt
from .torch_backend import TorchBackend

__all__ = ["BACKENDS", "AUTO_ORDER", "BackendUnavailable", "TorchBackend", "OnnxRuntimeBackend",
           "TensorRTBackend", "create_backend", "default_cache_dir", "exported_onnx"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
#: what ``auto`` tries, fastest first: (backend, device kind)
AUTO_ORDER = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda"),
              ("onnxruntime", "cpu"), ("torch", "cpu"))
PRECISIONS = ("fp32", "fp16", "int8")


def default_cache_dir() -> Path:
    """Where exported ONNX files (and their engines, beside them) go: $XDG_CACHE_HOME/rpl_perception."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rpl_perception"


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


def exported_onnx(model, size: Tuple[int, int], *, batch: int = 1, onnx_path=None,
                  cache_dir=None) -> Path:
    """The ONNX file of ``model`` at ``size``: ``onnx_path`` if it exists, else exported there.

    Without ``onnx_path`` the file goes to ``cache_dir`` (default :func:`default_cache_dir`),
    named by a digest of the weights and every export setting, so a changed model or setting
    never reuses a stale file. An existing ``onnx_path`` must have been exported for the same
    size, batch, score and smoothing (ValueError otherwise).
    """
    from ..export import EXPORT_VERSION, export_onnx, read_onnx_metadata

    w, h = size
    settings = {"input_size": [w, h], "batch": batch, "score": model.score,
                "smoothing_sigma": model.smoothing_sigma}
    if onnx_path is None:
        digest = hashlib.sha256(repr((sorted(settings.items()), EXPORT_VERSION)).encode())
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        onnx_path = folder / f"anomaly_{model.score}_{w}x{h}_b{batch}_{digest.hexdigest()[:16]}.onnx"
    onnx_path = Path(onnx_path)
    if onnx_path.is_file():
        stored = read_onnx_metadata(onnx_path)
        differing = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if differing:
            raise ValueError(f"{onnx_path} was exported with different settings: " + ", ".join(
                f"{k} {old} (file) vs {new} (requested)" for k, (old, new) in differing.items()))
        return onnx_path
    log.info("exporting the model to %s", onnx_path)
    return export_onnx(model, onnx_path, (w, h), batch=batch)


def _cuda_device(device: str) -> str:
    return device if device.startswith("cuda") else "cuda:0"


def _build(name: str, device: str, source, *, size, precision, batch, onnx_path, cache_dir,
           threads):
    """One backend on one device; BackendUnavailable when this machine cannot run it."""
    is_path = isinstance(source, (str, Path))
    if name == "torch":
        if is_path:
            raise ValueError("backend 'torch' needs the PyTorch model (an AnomalySegmenter or "
                             f"AnomalyModel), not the file {source}")
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch {torch.__version__} sees no CUDA GPU")
        if precision == "int8":
            raise ValueError("backend 'torch' runs fp32 or fp16 (CUDA autocast), not int8")
        model, _ = _model_and_size(source, size)
        return TorchBackend(model, device=device, fp16=precision == "fp16",
                            channels_last=device.startswith("cuda"))
    # what the runtime needs, checked before the export (slow, and useless where it cannot run)
    if name == "onnxruntime":
        onnxruntime_providers(device)
    elif name == "tensorrt":
        import_tensorrt()
    path = Path(source) if is_path else None
    if path is None:
        if importlib.util.find_spec("onnx") is None:
            raise BackendUnavailable(f"backend '{name}' runs the exported ONNX graph, and exporting needs the onnx "
                                     "package: pip install onnx (or this package's [onnx] extra)")
        model, model_size = _model_and_size(source, size)
        path = exported_onnx(model, model_size, batch=batch, onnx_path=onnx_path, cache_dir=cache_dir)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(path, device=device, threads=threads)
    if name == "tensorrt":
        return TensorRTBackend(path, device=_cuda_device(device), precision=precision)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def create_backend(name: str = "auto", model: Union[object, str, Path] = None, *,
                   device: str = "auto", precision: str = "fp32",
                   size: Optional[Tuple[int, int]] = None, batch: int = 1, onnx_path=None,
                   cache_dir=None, threads: Optional[int] = None):
    """Build the backend ``name`` for ``model`` and log what was chosen.

    Args:
        name: 'auto', 'tensorrt', 'onnxruntime' or 'torch'. 'auto' tries, fastest first,
            TensorRT (GPU), ONNX Runtime (GPU), PyTorch (GPU), ONNX Runtime (CPU), PyTorch
            (CPU), and takes the first that this machine can run.
        model: an :class:`~rpl_perception.segmenter.AnomalySegmenter` (the usual case), an
            :class:`~rpl_perception.models.AnomalyModel` with ``size``, or the path of an
            exported ``.onnx`` file (onnxruntime / tensorrt only).
        device: 'auto', 'cpu' or 'cuda[:N]'; 'auto' allows both, 'cpu'/'cuda' restrict the
            candidates to that device.
        precision: 'fp32', 'fp16' or 'int8'. fp16 applies to PyTorch on CUDA (autocast) and
            TensorRT; ONNX Runtime runs the fp32 graph. int8 is TensorRT only (its engine must
            already be built: ``rpl-perception build-engine --precision int8``).
        size: network (width, height); only needed with a bare AnomalyModel.
        batch: the static batch of an exported graph (larger batches run in chunks).
        onnx_path: where the exported graph is or goes (default: a file in ``cache_dir``
            named by the weights and settings; TensorRT engines are cached beside it).
        cache_dir: default $XDG_CACHE_HOME/rpl_perception (~/.cache/rpl_perception).
        threads: ONNX Runtime CPU threads (default: one per CPU available to the process).

    Returns a callable backend (see the module docstring). Raises BackendUnavailable when an
    explicitly named backend cannot run here, with the message saying what to install.

    Typical use (the segmenter keeps doing the resizing)::

        seg = AnomalySegmenter.from_checkpoint(path)
        seg.backend = create_backend("auto", seg, device="auto")
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not (device == "auto" or device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if model is None:
        raise ValueError("create_backend needs a model (AnomalySegmenter, AnomalyModel or "
                         ".onnx path)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    kind = None if device == "auto" else ("cpu" if device == "cpu" else "cuda")
    if name == "tensorrt" and kind == "cpu":
        raise ValueError("backend 'tensorrt' runs on a CUDA device, got device 'cpu'")
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
            backend = _build(backend_name, backend_device, model, size=size, precision=precision,
                             batch=batch, onnx_path=onnx_path, cache_dir=cache_dir, threads=threads)
        except BackendUnavailable as exc:
            skipped.append(f"{backend_name} ({backend_kind}): {exc}")
            continue
        why = f"; skipped {' | '.join(skipped)}" if skipped else ""
        log.info("backend %s: %s on %s%s", name, backend.describe(), backend_device, why)
        return backend
    raise BackendUnavailable(f"no backend {name!r} can run here (device {device!r}): "
                             + " | ".join(skipped))
