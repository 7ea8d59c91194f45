"""One deployment spec: which model runs how, and where its exported graph and engine live.

Modelled on Autoware's ``TrtCommonConfig``: :class:`DeploymentSpec` holds the model file, network
size, score settings, backend, device, precision, batch range, int8 calibration, cache folder and
explicit ONNX / engine paths, and resolves the ONNX and engine file names from them. The node's
parameters (:meth:`DeploymentSpec.from_settings`), ``rpl-perception build-engine``, ``export``,
``bench`` and ``eval`` all build one, so ``build-engine`` writes exactly the engine the node then
loads: the same model, size, score, precision, batch range and cache folder give the same paths.
"""

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from ..resources import model_path
from .common import BACKENDS, DEFAULT_WORKSPACE_GB, PRECISIONS
from .factory import build_backend

__all__ = ["DeploymentSpec", "BACKENDS", "PRECISIONS", "DEFAULT_WORKSPACE_GB"]


def _text(value) -> Optional[str]:
    """A parameter's text, None where it is empty (ROS parameters cannot be null)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _path(value) -> Optional[Path]:
    text = _text(value)
    return None if text is None else Path(text).expanduser()


@dataclass(frozen=True)
class DeploymentSpec:
    """How one model is deployed. None means "the model's own" / "the default"."""

    model: str = "default"  # model file, or 'default' for the embedded model
    network_size: Optional[Tuple[int, int]] = None  # (width, height)
    score: Optional[str] = None
    smoothing_sigma: Optional[float] = None
    backend: str = "auto"  # auto | tensorrt | onnxruntime | torch
    device: str = "auto"  # auto | cpu | cuda[:N]
    precision: str = "fp32"  # fp32 | fp16 | int8 (scores are float32 in every case)
    batch: Tuple[int, int, int] = (1, 1, 1)  # min, opt, max frames per network batch
    cache_dir: Optional[Path] = None  # exported ONNX files and engines (default ~/.cache/rpl_perception)
    onnx_path: Optional[Path] = None  # an exported graph to use (or to write) instead of the cache's
    engine_path: Optional[Path] = None  # a TensorRT engine to load (or to build) instead of the cache's
    calibration_dir: Optional[Path] = None  # images for an int8 build
    workspace_gb: float = DEFAULT_WORKSPACE_GB
    threads: Optional[int] = None  # ONNX Runtime CPU threads
    build_only: bool = False  # prepare the backend (export, engine) and stop

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device {self.device!r} is unknown; choose auto, cpu, cuda or cuda:N")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
        low, opt, high = (int(v) for v in self.batch)
        object.__setattr__(self, "batch", (low, opt, high))
        if not 1 <= low <= opt <= high:
            raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {low}/{opt}/{high}")
        if self.backend == "tensorrt" and self.device == "cpu":
            raise ValueError("backend 'tensorrt' runs on a CUDA device, not on device 'cpu'")
        if self.precision == "int8" and self.backend in ("torch", "onnxruntime"):
            raise ValueError(f"precision int8 is TensorRT only; backend {self.backend!r} runs fp32 or fp16")
        if self.engine_path is not None and self.backend not in ("auto", "tensorrt"):
            raise ValueError(f"engine_path is a TensorRT engine; backend {self.backend!r} does not load one")
        if not self.workspace_gb > 0:
            raise ValueError(f"workspace must be > 0 GB, got {self.workspace_gb}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.network_size is not None:
            object.__setattr__(self, "network_size", tuple(int(v) for v in self.network_size))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, cameras: int = 1) -> "DeploymentSpec":
        """The spec from node parameters or CLI options (missing keys keep the defaults).

        Understands the node's names (``network_width`` / ``network_height``, ``max_batch`` with 0 =
        one per camera, empty text = unset, a negative ``smoothing_sigma`` = the model's own,
        ``engine_path``, ``calibration_images``) and the CLI's (``size``, ``engine``). The batch
        range is dynamic 1..``max_batch`` and the engine is optimised for its maximum (every camera
        delivering). Raises ValueError naming the setting to change.
        """
        get = settings.get
        size = get("network_size") or get("size")
        width, height = int(get("network_width") or 0), int(get("network_height") or 0)
        if size is None and (width or height):
            if not (width and height):
                raise ValueError(f"network_width and network_height must both be set or both be 0 "
                                 f"(the model's size); got {width}×{height}")
            size = (width, height)
        sigma = get("smoothing_sigma")
        if sigma is not None and (float(sigma) < 0 or math.isnan(float(sigma))):
            sigma = None
        max_batch = int(get("max_batch") or 0) or max(1, int(cameras))
        min_batch = int(get("min_batch") or 1)
        values = dict(
            model=_text(get("model")) or "default", network_size=size, score=_text(get("score")),
            smoothing_sigma=None if sigma is None else float(sigma),
            backend=_text(get("backend")) or "auto", device=_text(get("device")) or "auto",
            precision=_text(get("precision")) or "fp32",
            batch=(min_batch, max_batch, max_batch) if min_batch <= max_batch else (min_batch,) * 3,
            cache_dir=_path(get("cache_dir")), onnx_path=_path(get("onnx_path")),
            engine_path=_path(get("engine_path") or get("engine")),
            calibration_dir=_path(get("calibration_images") or get("calibration_dir")),
            threads=int(get("threads")) if get("threads") else None,
            build_only=bool(get("build_only") or False))
        if get("workspace_gb") or get("workspace"):
            values["workspace_gb"] = float(get("workspace_gb") or get("workspace"))
        if min_batch > max_batch:
            raise ValueError(f"min_batch {min_batch} exceeds max_batch {max_batch}")
        return cls(**values)

    def with_changes(self, **changes) -> "DeploymentSpec":
        return replace(self, **changes)

    # -- what it resolves --------------------------------------------------------------------------

    @property
    def model_file(self) -> Path:
        return model_path(self.model)

    @property
    def dynamic_batch(self) -> bool:
        """A graph for one frame at a time is exported static (ONNX Runtime runs a static graph faster)."""
        return self.batch != (1, 1, 1)

    def onnx_file(self, model, size: Tuple[int, int]) -> Path:
        """The exported graph of ``model`` (an AnomalyModel) at ``size``; exported on first use."""
        from .onnx_cache import exported_onnx

        return exported_onnx(model, size, dynamic_batch=self.dynamic_batch, batch=self.batch[2],
                             onnx_path=self.onnx_path, cache_dir=self.cache_dir)

    def engine_file(self, onnx_path) -> Path:
        """Where the TensorRT engine of ``onnx_path`` is (or goes) for this precision and batch
        range: ``engine_path``, else ``cache_dir``, else beside the ONNX file."""
        from .engine_cache import engine_file_name

        if self.engine_path is not None:
            return self.engine_path
        onnx_path = Path(onnx_path)
        folder = self.cache_dir if self.cache_dir is not None else onnx_path.parent
        return folder / engine_file_name(onnx_path, self.precision, self.batch)

    def create_backend(self, model, size: Optional[Tuple[int, int]] = None):
        """The backend this spec names for ``model``, with the reasons for its choice logged: the
        one way to build a backend.

        ``backend`` 'auto' tries, fastest first, TensorRT (GPU), ONNX Runtime (GPU), PyTorch
        (GPU), ONNX Runtime (CPU), PyTorch (CPU), and takes the first that starts: any failure of
        a candidate (a missing package, a parse or build error, a read-only engine folder, an
        unsupported TensorRT) skips it, and the reasons are logged. A named backend fails with
        its error. ``device`` 'cpu' / 'cuda' restricts the candidates to that device.
        ``precision`` fp16 applies to PyTorch on CUDA (autocast) and TensorRT; ONNX Runtime runs
        the fp32 graph; int8 is TensorRT only. ``onnx_path`` defaults to a file in ``cache_dir``
        ($XDG_CACHE_HOME/rpl_perception) named by the weights and settings, ``engine_path`` to
        a file beside it.

        Args:
            model: an :class:`~rpl_perception.segmenter.AnomalySegmenter` (the usual case), an
                :class:`~rpl_perception.models.AnomalyModel` with ``size``, or the path of an
                exported ``.onnx`` file (onnxruntime / tensorrt only).
            size: network (width, height); only needed with a bare AnomalyModel.

        Returns a callable backend (see :mod:`rpl_perception.backends`), with ``skipped``: the
        candidates 'auto' passed over and why. Raises BackendUnavailable when none can run.
        """
        if model is None:
            raise ValueError("create_backend needs a model (AnomalySegmenter, AnomalyModel or .onnx path)")
        return build_backend(self, model, size)

    def describe(self) -> str:
        low, opt, high = self.batch
        parts = [f"backend {self.backend}", f"device {self.device}", f"precision {self.precision}",
                 f"batch {low}..{high}"]
        if self.engine_path is not None:
            parts.append(f"engine {self.engine_path}")
        elif self.cache_dir is not None:
            parts.append(f"cache {self.cache_dir}")
        return ", ".join(parts)
