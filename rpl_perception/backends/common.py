"""What every backend shares: the batch contract, fixed-batch chunking, and the missing-package error."""

from typing import Callable, Optional, Tuple

import numpy as np

__all__ = ["BackendUnavailable", "check_batch", "run_in_fixed_batches"]


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (a package or a GPU is missing); the message says what to install."""


def check_batch(batch, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
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


def run_in_fixed_batches(run: Callable[[np.ndarray], Tuple[np.ndarray, ...]], batch: np.ndarray,
                         fixed: Optional[int]) -> Tuple[np.ndarray, ...]:
    """Call ``run`` on chunks of exactly ``fixed`` frames (a static-batch graph), padding the last.

    ``fixed`` None (dynamic batch) or equal to the batch size: one call. Outputs are concatenated
    along the batch axis and cut back to the input's batch size.
    """
    n = batch.shape[0]
    if fixed is None or fixed == n:
        return run(batch)
    chunks = []
    for start in range(0, n, fixed):
        chunk = batch[start:start + fixed]
        if len(chunk) < fixed:  # repeat the last frame: any valid frame will do
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
        chunks.append(run(chunk))
    return tuple(np.concatenate(parts)[:n] for parts in zip(*chunks))
