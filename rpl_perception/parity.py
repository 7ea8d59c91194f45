"""How closely a backend reproduces PyTorch: the parity report and a real-image sample batch."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .models import AnomalyModel

__all__ = ["ParityReport", "check_parity", "sample_batch"]


@dataclass
class ParityReport:
    """How closely a backend reproduces PyTorch on the same batch."""

    anomaly_max_abs_error: float
    label_agreement: float  # fraction of pixels with equal labels

    def passes(self, anomaly_tolerance: float = 1e-4, min_label_agreement: float = 0.9999) -> bool:
        """The issue's fp32 criteria: max |Δanomaly| ≤ 1e-4, labels equal on ≥ 99.99 % of pixels."""
        return (self.anomaly_max_abs_error <= anomaly_tolerance
                and self.label_agreement >= min_label_agreement)

    def __str__(self):
        return (f"anomaly max abs error {self.anomaly_max_abs_error:.3g}, "
                f"labels equal on {100 * self.label_agreement:.4f} % of pixels")


def check_parity(model: AnomalyModel, backend, batch: np.ndarray) -> ParityReport:
    """Run ``batch`` (B, H, W, 3) uint8 through PyTorch (CPU, fp32) and ``backend``; compare."""
    with torch.inference_mode():
        ref_labels, ref_anomaly = (t.cpu().numpy() for t in model(torch.from_numpy(batch))[:2])
    labels, anomaly = backend(batch)
    if labels.shape != ref_labels.shape or anomaly.shape != ref_anomaly.shape:
        raise ValueError(f"backend output shapes {labels.shape}, {anomaly.shape} differ from "
                         f"PyTorch's {ref_labels.shape}, {ref_anomaly.shape}")
    return ParityReport(float(np.abs(anomaly.astype(np.float64) - ref_anomaly).max()),
                        float((labels == ref_labels).mean()))


def sample_batch(size: Tuple[int, int], batch: int = 1,
                 images: Optional[Sequence[Path]] = None) -> np.ndarray:
    """A real-image (B, H, W, 3) uint8 batch at the network size (the bundled samples by default)."""
    from .image import read_rgb, resize_rgb
    from .resources import sample_images

    if images is None:
        images = sample_images()
    frames = [resize_rgb(read_rgb(images[i % len(images)]), size) for i in range(batch)]
    return np.stack(frames)
