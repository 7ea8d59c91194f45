"""ONNX export of the whole per-frame computation (:class:`~rpl_perception.models.AnomalyModel`).

One graph: uint8 image batch (B, H, W, 3) → ``labels`` (B, H, W) uint8 and ``anomaly``
(B, H, W) float32 [, ``logits`` (B, C, H, W) float32], so normalisation, the network, argmax,
logsumexp and the Gaussian smoothing all run on the inference device. The model is traced under
:class:`~rpl_perception.export_forms.ExportForms` (ONNX-expressible, faster forms of a few ops);
:mod:`rpl_perception.parity` compares a backend with PyTorch.

Shapes: static by default; ``dynamic_batch`` makes the batch dimension symbolic. The image size
stays static for ESPNetv2: its pooling operators (and the ``max(5, ⌈s·H⌉)`` pyramid sizes)
change with the input size, so one ONNX file serves one network size. ``dynamic_size=True`` is
refused with that explanation for such models; export one file per size instead.
"""

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .export_forms import ExportForms
from .models import AnomalyModel

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "METADATA_KEY", "DEFAULT_OPSET", "EXPORT_VERSION", "export_onnx",
           "read_onnx_metadata", "trace_onnx"]

log = logging.getLogger(__name__)

INPUT_NAME = "images"
#: outputs in graph order; ``logits`` only when exported with ``return_logits``
OUTPUT_NAMES = ("labels", "anomaly", "logits")
#: the ``metadata_props`` key holding the JSON export description
METADATA_KEY = "rpl_perception"
#: 17 is the newest opset TensorRT 8.6 parses fully; ONNX Runtime supports it everywhere
DEFAULT_OPSET = 17
#: bumped whenever the exported graph changes for the same model (cached exports are keyed by it)
EXPORT_VERSION = 1


def _check_size(model: AnomalyModel, size) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height), got {size!r}") from None
    divisor = getattr(model.network, "size_divisor", 1)
    if w <= 0 or h <= 0 or w % divisor or h % divisor:
        raise ValueError(f"network size {w}×{h} must be positive multiples of {divisor}")
    return w, h


def trace_onnx(module: torch.nn.Module, example: torch.Tensor, path, input_names, output_names,
               dynamic_axes=None, *, opset: int = DEFAULT_OPSET, dynamic_size: bool = False) -> Path:
    """Trace ``module`` on ``example`` into the ONNX file ``path`` with the :class:`ExportForms`
    rewrites (the one tracing step of every export here: the model's and the training's frozen pass).
    A failed export leaves no file behind."""
    path = Path(path)
    try:
        with ExportForms(dynamic_size), torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about Python ints taken from shapes (with static sizes they are
            # meant to be constants) and about slices it cannot fold; neither is a problem here.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return path


def export_onnx(model: AnomalyModel, path, size: Tuple[int, int], *, batch: int = 1,
                dynamic_batch: bool = False, dynamic_size: bool = False,
                return_logits: bool = False, opset: int = DEFAULT_OPSET,
                metadata: Optional[Dict[str, object]] = None) -> Path:
    """Export ``model`` to ``path`` → the path.

    ``size`` is the network input (width, height); ``batch`` the static batch (the example
    batch when ``dynamic_batch``). The graph's input is ``images`` (B, H, W, 3) uint8; its
    outputs ``labels``, ``anomaly`` and, with ``return_logits``, ``logits`` (all closed-set
    channels, as :class:`AnomalyModel` returns them). ``metadata`` (JSON-able) is stored with
    the export settings under the ``rpl_perception`` metadata key (see :func:`read_onnx_metadata`).
    """
    import onnx

    w, h = _check_size(model, size)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    output_names = list(OUTPUT_NAMES[:3 if return_logits else 2])
    dynamic_axes = None
    if dynamic_batch or dynamic_size:
        def axes(height_axis):  # symbolic batch and/or (height, width) of one tensor
            return {**({0: "batch"} if dynamic_batch else {}),
                    **({height_axis: "height", height_axis + 1: "width"} if dynamic_size else {})}
        dynamic_axes = {INPUT_NAME: axes(1), "labels": axes(1), "anomaly": axes(1), "logits": axes(2)}
        dynamic_axes = {k: v for k, v in dynamic_axes.items() if k in [INPUT_NAME] + output_names}

    model = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and flags
    model.return_logits = return_logits
    example = torch.zeros(batch, h, w, 3, dtype=torch.uint8)
    tmp = path.with_name(path.name + ".tmp")
    trace_onnx(model, example, tmp, [INPUT_NAME], output_names, dynamic_axes, opset=opset, dynamic_size=dynamic_size)

    proto = onnx.load(str(tmp))
    description = {
        "input_size": [w, h], "batch": None if dynamic_batch else batch,
        "dynamic_batch": dynamic_batch, "return_logits": return_logits, "score": model.score,
        "smoothing_sigma": model.smoothing_sigma, "num_inlier": model.num_inlier,
        "opset": opset, "export_version": EXPORT_VERSION, "torch": torch.__version__,
        **(metadata or {}),
    }
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(description, sort_keys=True)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)  # never leave a half-written model behind
    log.info("exported %s (%d×%d, batch %s, score %s, %.1f MB)", path, w, h,
             "dynamic" if dynamic_batch else batch, model.score, path.stat().st_size / 1e6)
    return path


def read_onnx_metadata(path) -> Dict[str, object]:
    """The export description stored by :func:`export_onnx` ({} for other ONNX files)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}
