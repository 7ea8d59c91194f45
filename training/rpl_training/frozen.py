"""The frozen closed-set network's share of a training step: what the branch and the losses read that the
branch does not change, computed without autograd.

Per batch of uint8 images (B, H, W, 3) the frozen pass gives (:data:`FROZEN_KEYS`):

* ``deep`` — the encoder's deep feature the branch reads (stride 16);
* ``feat`` — the classifier head's input, to which the branch adds its residual (stride 2);
* ``pseudo`` (uint8) and ``closed_entropy`` — argmax and entropy of the closed-set logits ỹ at the
  input resolution over the inlier classes (:func:`~rpl_training.losses.closed_set_targets`);
* ``context_deep`` — the deep feature of CoroCL's context images, when they are given.

It runs on the training device inside the model's step (GPU), or, on a CPU, inside the data
loader's worker process (:class:`FrozenCollate`): there it overlaps the trainable step of the
previous batch on the other core, and with ``onnxruntime`` it runs as one ONNX graph exported
with :class:`rpl_perception.export_forms.ExportForms` (the same rewrites as the deployed model). The
values are those of the eager closed-set network up to float rounding (tested).
"""

import copy
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from rpl_perception.export import trace_onnx
from rpl_perception.models import ImageNormalisation

from .losses import closed_set_targets
from .sample_stream import collate

__all__ = ["FROZEN_KEYS", "FrozenClosedSet", "FrozenEncoder", "export_frozen", "OnnxFrozenPass", "TorchFrozenPass",
           "FrozenCollate", "onnxruntime_available"]

FROZEN_KEYS = ("deep", "feat", "pseudo", "closed_entropy")


class FrozenClosedSet(nn.Module):
    """uint8 (B, H, W, 3) images → ``deep``, ``feat``, ``pseudo`` (uint8), ``closed_entropy``.

    Normalises as :class:`rpl_perception.models.AnomalyModel`; the closed-set logits are resized
    to the input for the inlier channels only (interpolation never mixes channels) and turned into
    the losses' targets in float32 (also under autocast).
    """

    def __init__(self, closed_set: nn.Module, mean: Sequence[float], std: Sequence[float], num_inlier: int):
        super().__init__()
        self.closed_set = closed_set
        self.normalise = ImageNormalisation(mean, std)
        self.num_inlier = int(num_inlier)

    def forward(self, images: torch.Tensor):
        seg = self.closed_set
        x = self.normalise(images)
        deep, feat = seg.extract_features(x)
        logits = seg.upsample_logits(seg.head(feat)[:, : self.num_inlier].float(), x.shape[-2:])
        pseudo, entropy = closed_set_targets(logits)
        return deep, feat, pseudo.to(torch.uint8), entropy


class FrozenEncoder(nn.Module):
    """uint8 images → the deep feature only (CoroCL's context images skip the decoder and head)."""

    def __init__(self, closed_set: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.closed_set = closed_set
        self.normalise = ImageNormalisation(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.closed_set.extract_deep(self.normalise(images))


class TorchFrozenPass(nn.Module):
    """The frozen pass in PyTorch on any device (``compile``: ``torch.compile`` both modules,
    minutes of compilation per input shape, then faster on a CPU). Always in eval mode: the
    closed-set network's BatchNorm keeps its running statistics whatever ``train()`` is called with."""

    def __init__(self, closed_set: FrozenClosedSet, encoder: FrozenEncoder, compile: bool = False):
        super().__init__()
        self.closed_set, self.encoder = closed_set, encoder
        # a plain dict: the compiled wrappers are not registered as submodules a second time
        self._run = {"closed_set": torch.compile(closed_set, dynamic=False) if compile else closed_set,
                     "encoder": torch.compile(encoder, dynamic=False) if compile else encoder}
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, images: torch.Tensor, context: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            out = dict(zip(FROZEN_KEYS, self._run["closed_set"](images)))
            if context is not None:
                out["context_deep"] = self._run["encoder"](context)
        return out


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _export(module: nn.Module, path: Path, example: torch.Tensor, outputs: Sequence[str]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    trace_onnx(module, example, tmp, ["images"], outputs,
               {"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}})
    return tmp.replace(path)


def export_frozen(closed_set: FrozenClosedSet, encoder: FrozenEncoder, folder: Path, crop_hw) -> Dict[str, Path]:
    """Export both modules (CPU copies, batch dynamic, size ``crop_hw`` fixed) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in crop_hw)
    example = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    paths = {"closed_set": folder / f"frozen_closed_set_{w}x{h}.onnx", "encoder": folder / f"frozen_encoder_{w}x{h}.onnx"}
    # copies: the training network stays on its device
    _export(copy.deepcopy(closed_set).cpu().eval(), paths["closed_set"], example, FROZEN_KEYS)
    _export(copy.deepcopy(encoder).cpu().eval(), paths["encoder"], example, ("context_deep",))
    return paths


class OnnxFrozenPass:
    """The exported frozen pass in ONNX Runtime (CPU). Sessions open on first use in the process
    that uses them (a loader worker), and are not pickled."""

    def __init__(self, paths: Dict[str, Path], threads: int = 1):
        self.paths, self.threads = {k: str(v) for k, v in paths.items()}, int(threads)
        self._sessions = None

    def __getstate__(self):
        return {"paths": self.paths, "threads": self.threads, "_sessions": None}

    def _open(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        return {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                for name, path in self.paths.items()}

    def __call__(self, images: torch.Tensor, context: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if self._sessions is None:
            self._sessions = self._open()
        values = self._sessions["closed_set"].run(None, {"images": np.ascontiguousarray(images.numpy())})
        out = {key: torch.from_numpy(value) for key, value in zip(FROZEN_KEYS, values)}
        if context is not None:
            deep = self._sessions["encoder"].run(None, {"images": np.ascontiguousarray(context.numpy())})[0]
            out["context_deep"] = torch.from_numpy(deep)
        return out


class FrozenCollate:
    """``collate`` followed by the frozen pass, for the data loader (its worker runs both).

    ``with_context``: also encode the context images (CoroCL enabled).
    """

    def __init__(self, frozen_pass, with_context: bool):
        self.frozen_pass, self.with_context = frozen_pass, bool(with_context)

    def __call__(self, samples):
        batch = collate(samples)
        batch.update(self.frozen_pass(batch["image"], batch["context"] if self.with_context else None))
        return batch
