"""What every backend shares: the names of backends and precisions, the batch contract, batch
chunking, and the missing-package error."""

from typing import Callable, Tuple

import numpy as np

__all__ = ["BACKENDS", "PRECISIONS", "DEFAULT_WORKSPACE_GB", "BackendUnavailable", "check_batch", "run_in_batches",
           "describe_exception"]

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
#: a 2048×1024 ESPNetv2 build fits in far less; TensorRT takes only what tactics need
DEFAULT_WORKSPACE_GB = 2.0


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (a package or a GPU is missing); the message says what to install."""


def describe_exception(exc: BaseException) -> str:
    """``message`` for our own BackendUnavailable, ``Type: message`` for anything else."""
    return str(exc) if isinstance(exc, BackendUnavailable) else f"{type(exc).__name__}: {exc}"


def check_batch(batch, size=None) -> np.ndarray:
    """Validate a backend input: (B, H, W, 3) uint8 numpy, at ``size`` = (width, height) if given."""
    if not isinstance(batch, np.ndarray):
        raise ValueError(f"expected a (B, H, W, 3) uint8 numpy batch, got {type(batch).__name__}")
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3 or batch.shape[0] == 0:
        raise ValueError(f"expected a (B, H, W, 3) uint8 numpy batch with B >= 1, got shape "
                         f"{batch.shape} dtype {batch.dtype}")
    if size is not None and (batch.shape[2], batch.shape[1]) != tuple(size):
        raise ValueError(f"batch frames are {batch.shape[2]}×{batch.shape[1]}, the model runs at "
                         f"{size[0]}×{size[1]}: resize first (AnomalySegmenter.preprocess does)")
    return np.ascontiguousarray(batch)


def run_in_batches(run: Callable[[np.ndarray], Tuple[np.ndarray, ...]], batch: np.ndarray,
                   low: int, high: int) -> Tuple[np.ndarray, ...]:
    """Call ``run`` on chunks of ``low``..``high`` frames (what the graph or engine accepts).

    Chunks take up to ``high`` frames; one shorter than ``low`` (a short batch, or the remainder
    of a long one) is padded by repeating its last frame, and the padding's outputs dropped. A
    static batch is ``low == high``. Outputs are concatenated along the batch axis.
    """
    if not 1 <= low <= high:
        raise ValueError(f"batch range must satisfy 1 <= min <= max, got {low}..{high}")
    n = batch.shape[0]
    if low <= n <= high:
        return run(batch)
    parts = []
    for start in range(0, n, high):
        chunk = batch[start:start + high]
        count = len(chunk)
        if count < low:  # any valid frame will do as padding
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], low - count, axis=0)])
        parts.append(tuple(out[:count] for out in run(chunk)))
    return tuple(np.concatenate(outputs) for outputs in zip(*parts))
