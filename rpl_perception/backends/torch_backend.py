"""PyTorch eager backend (CPU, or CUDA with optional fp16 autocast and channels_last)."""

import copy
import logging
from typing import Optional, Tuple

import numpy as np
import torch

from ..models import AnomalyModel

__all__ = ["TorchBackend"]

log = logging.getLogger(__name__)


class TorchBackend:
    """Run an :class:`AnomalyModel` in PyTorch: ``backend(batch) → (labels, anomaly)``.

    On CUDA: ``fp16`` runs the network under fp16 autocast (the model's scoring head switches
    autocast off, so scores and smoothing stay float32) and ``channels_last`` stores the
    weights NHWC (the uint8 NHWC input already is).

    The caller's model is left as it is: where it needs another device, memory format or eval
    mode, the backend runs a copy (and says so in the log); otherwise it shares the model.
    """

    name = "torch"

    def __init__(self, model: AnomalyModel, device: str = "cpu", fp16: bool = False,
                 channels_last: bool = False):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        on_cuda = self.device.type == "cuda"
        self.fp16 = fp16 and on_cuda
        self.channels_last = channels_last and on_cuda
        self.model = self._prepared(model)

    def _prepared(self, model: AnomalyModel) -> AnomalyModel:
        tensors = list(model.parameters()) + list(model.buffers())
        index = self.device.index if self.device.index is not None else (
            torch.cuda.current_device() if self.device.type == "cuda" else None)
        on_device = all(t.device.type == self.device.type and (t.device.index in (None, index))
                        for t in tensors)
        in_format = not self.channels_last or all(
            p.dim() != 4 or p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
        if on_device and in_format and not model.training:
            return model
        log.debug("torch backend: running a copy of the model (device %s, channels_last %s, eval mode)",
                  self.device, self.channels_last)
        prepared = copy.deepcopy(model).to(self.device).eval()
        if self.channels_last:
            prepared = prepared.to(memory_format=torch.channels_last)
        return prepared

    def describe(self) -> str:
        if self.device.type == "cpu":
            return f"torch {torch.__version__} cpu fp32 ({torch.get_num_threads()} threads)"
        flags = [f for f, on in (("fp16 autocast (fp32 scores)", self.fp16),
                                 ("channels_last", self.channels_last)) if on]
        return f"torch {torch.__version__} {self.device} " + (", ".join(flags) or "fp32")

    # The three stages, separately callable so that the benchmark can time each.

    def upload(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def run(self, images: torch.Tensor):
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            return self.model(images)[:2]

    def download(self, outputs) -> Tuple[np.ndarray, np.ndarray]:
        labels, anomaly = outputs
        return labels.cpu().numpy(), anomaly.float().cpu().numpy()

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_device_memory(self) -> Optional[int]:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray):
        return self.download(self.run(self.upload(batch)))
