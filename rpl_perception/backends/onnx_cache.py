"""The exported ONNX file of a model: where it goes and when an existing one may be reused.

A cached export is named by a digest of everything the graph depends on: every parameter and
buffer (the normalisation constants are non-persistent buffers, outside ``state_dict``), the
class count, score(s), smoothing, size, batch kind, opset, export version and the torch version
that traced it. A changed model or setting therefore never reuses a stale file.
"""

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, Tuple

__all__ = ["default_cache_dir", "exported_onnx", "export_settings"]

log = logging.getLogger(__name__)

_REQUIRED_SETTINGS = ("input_size", "batch", "score", "smoothing_sigma")


def default_cache_dir() -> Path:
    """Where exported ONNX files (and their engines, beside them) go: $XDG_CACHE_HOME/rpl_perception."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rpl_perception"


def export_settings(model, size: Tuple[int, int], dynamic_batch: bool, batch: int) -> Dict[str, object]:
    """The export settings a stored file must match (as :func:`export_onnx` records them)."""
    w, h = size
    return {"input_size": [w, h], "batch": None if dynamic_batch else batch,
            "dynamic_batch": dynamic_batch, "score": model.score,
            "scores": None if model.scores is None else list(model.scores),
            "smoothing_sigma": model.smoothing_sigma, "num_inlier": model.num_inlier}


def _digest(model, settings: Dict[str, object]) -> str:
    import torch

    from ..export import DEFAULT_OPSET, EXPORT_VERSION

    digest = hashlib.sha256(repr((sorted(settings.items()), EXPORT_VERSION, DEFAULT_OPSET,
                                  torch.__version__)).encode())
    tensors = dict(model.state_dict())
    tensors.update((name, b) for name, b in model.named_buffers() if name not in tensors)
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def exported_onnx(model, size: Tuple[int, int], *, dynamic_batch: bool = False, batch: int = 1,
                  onnx_path=None, cache_dir=None) -> Path:
    """The ONNX file of ``model`` at ``size``: ``onnx_path`` if it exists, else exported there.

    Without ``onnx_path`` the file goes to ``cache_dir`` (default :func:`default_cache_dir`),
    named by the digest above. An existing file must have been exported with the same settings
    (ValueError naming each difference otherwise); a missing one is exported (an OSError where
    the folder is not writable).
    """
    from ..export import export_onnx, read_onnx_metadata

    w, h = size
    settings = export_settings(model, size, dynamic_batch, batch)
    if onnx_path is None:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        kind = "dyn" if dynamic_batch else f"b{batch}"
        name = "+".join(model.scores) if model.scores is not None else model.score
        onnx_path = folder / f"anomaly_{name}_{w}x{h}_{kind}_{_digest(model, settings)}.onnx"
    onnx_path = Path(onnx_path)
    if onnx_path.is_file():
        stored = read_onnx_metadata(onnx_path)
        # files of older exports lack the newer keys: those are compared where recorded
        differing = {k: (stored.get(k), v) for k, v in settings.items()
                     if stored.get(k) != v and (k in stored or k in _REQUIRED_SETTINGS)}
        if differing:
            raise ValueError(f"{onnx_path} was exported with different settings: " + ", ".join(
                f"{k} {old} (file) vs {new} (requested)" for k, (old, new) in differing.items()))
        return onnx_path
    log.info("exporting the model to %s", onnx_path)
    return export_onnx(model, onnx_path, (w, h), batch=batch, dynamic_batch=dynamic_batch)
