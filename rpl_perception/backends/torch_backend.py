"""PyTorch eager backend (CPU, or CUDA with optional fp16 autocast)."""

import numpy as np
import torch

from ..models import AnomalyModel

__all__ = ["TorchBackend"]


class TorchBackend:
    name = "torch"

    def __init__(self, model: AnomalyModel, device: str = "cpu", fp16: bool = False):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        self.model = model.to(self.device).eval()
        self.fp16 = fp16 and self.device.type == "cuda"

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray):
        images = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            labels, anomaly = self.model(images)[:2]
        return labels.cpu().numpy(), anomaly.float().cpu().numpy()
