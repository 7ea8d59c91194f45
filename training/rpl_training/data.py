"""The training data stream: outlier-exposure samples, addressed by iteration.

Every sample is a pure function of ``(seed, epoch, position in the epoch)``: the epoch's
permutation of the inlier images comes from ``(seed, epoch)`` and all augmentation randomness
(crop, flip, outlier choice, scale, paste position) from a generator seeded with
``(seed, epoch, position)``. Hence the stream does not depend on the number of loader workers,
and resuming at iteration *i* only needs *i* (:class:`IterationBatchSampler` starts there).

Unreadable or truncated files are skipped (the next inlier image, another outlier image);
each sample reports the files it skipped, and the training loop warns once per file and counts
them.
"""

from typing import Dict, List, NamedTuple, Sequence

import numpy as np
import torch

from .datasets import (CityscapesInliers, CocoOutliers, CutoutOutliers, DatasetLayoutError,
                       FrameInliers, UnreadableImage)
from .transforms import OutlierExposure

__all__ = ["SampleKey", "OutlierExposureDataset", "IterationBatchSampler", "collate",
           "build_inliers", "build_outliers", "build_dataset", "make_loader", "worker_init"]


class SampleKey(NamedTuple):
    epoch: int
    position: int  # index in the epoch's permutation
    index: int  # inlier image index


class OutlierExposureDataset(torch.utils.data.Dataset):
    """``dataset[SampleKey]`` → dict of uint8 arrays ``image``, ``label``, ``context``,
    ``context_label`` (see :class:`~rpl_training.transforms.OutlierExposure`) and ``skipped``
    (names of files that could not be read while building it)."""

    def __init__(self, inliers, outliers, transform: OutlierExposure, seed: int):
        self.inliers, self.outliers, self.transform, self.seed = inliers, outliers, transform, int(seed)

    def __len__(self) -> int:
        return len(self.inliers)

    @staticmethod
    def _read_first_readable(source, first: int, skipped: List[str], what: str):
        for step in range(len(source)):
            index = (first + step) % len(source)
            try:
                return source.read(index)
            except UnreadableImage as exc:
                skipped.append(f"{source.describe(index)} ({exc})")
        raise RuntimeError(f"no readable {what} image: all {len(source)} files failed to load")

    def __getitem__(self, key) -> Dict[str, object]:
        epoch, position, index = key
        rng = np.random.default_rng([self.seed, int(epoch), int(position)])
        skipped: List[str] = []
        outlier_index = int(rng.integers(len(self.outliers)))
        image, label = self._read_first_readable(self.inliers, int(index), skipped, "inlier")
        obj_image, obj_mask = self._read_first_readable(self.outliers, outlier_index, skipped, "outlier")
        sample = self.transform(image, label, obj_image, obj_mask, rng)
        sample["skipped"] = skipped
        return sample


class IterationBatchSampler(torch.utils.data.Sampler):
    """Per-process lists of :class:`SampleKey` for iterations ``start … total − 1``.

    Iteration *i* is batch ``i mod E`` of epoch ``i div E`` (E = ⌊N / batch_size⌋, the last
    incomplete batch dropped as the official loader does); the global batch is split into
    ``world_size`` consecutive shares, this process taking share ``rank``.
    """

    def __init__(self, num_samples: int, batch_size: int, total: int, *, seed: int, start: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"the batch size {batch_size} must be divisible by the number of processes {world_size}")
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} inlier images are fewer than one batch of {batch_size}")
        self.num_samples, self.batch_size, self.total, self.seed = num_samples, batch_size, total, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self.per_process = batch_size // world_size
        self.iterations_per_epoch = num_samples // batch_size
        self._permutation = (None, None)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_samples))
        return self._permutation[1]

    def keys(self, iteration: int) -> List[SampleKey]:
        epoch, batch = divmod(iteration, self.iterations_per_epoch)
        order = self.permutation(epoch)
        first = batch * self.batch_size + self.rank * self.per_process
        return [SampleKey(epoch, p, int(order[p])) for p in range(first, first + self.per_process)]

    def __iter__(self):
        for iteration in range(self.start, self.total):
            yield self.keys(iteration)

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def collate(samples: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """Stack a list of samples: uint8 tensors (B,H,W,3) / (B,H,W); ``skipped`` concatenated."""
    batch: Dict[str, object] = {key: torch.from_numpy(np.stack([s[key] for s in samples]))
                                for key in ("image", "label", "context", "context_label")}
    batch["skipped"] = [name for s in samples for name in s["skipped"]]
    return batch


def build_inliers(cfg: Dict[str, object]):
    if cfg["kind"] == "cityscapes":
        return CityscapesInliers(cfg["root"], cfg["split"])
    return FrameInliers(cfg["root"], video_stride=cfg["video_stride"])


def build_outliers(cfg: Dict[str, object], seed: int):
    if cfg["kind"] == "coco":
        return CocoOutliers(cfg["root"], cfg["split"], filter=cfg["filter"], min_size=cfg["min_size"],
                            excluded=cfg["excluded_classes"], max_images=cfg["max_images"], seed=seed)
    return CutoutOutliers(cfg["root"])


def build_dataset(data_cfg: Dict[str, object], mean: Sequence[float], seed: int,
                  inliers=None, outliers=None) -> OutlierExposureDataset:
    """The training dataset from the ``data`` config section; layout problems of both datasets
    are reported together in one :class:`DatasetLayoutError`."""
    problems = []
    if inliers is None:
        try:
            inliers = build_inliers(data_cfg["inlier"])
        except DatasetLayoutError as exc:
            problems.append(f"inlier data ({data_cfg['inlier']['kind']}): {exc}")
    if outliers is None:
        try:
            outliers = build_outliers(data_cfg["outlier"], seed)
        except DatasetLayoutError as exc:
            problems.append(f"outlier data ({data_cfg['outlier']['kind']}): {exc}")
    if problems:
        raise DatasetLayoutError("\n".join(problems))
    out = data_cfg["outlier"]
    transform = OutlierExposure(
        crop_size=tuple(data_cfg["crop_size"]),
        pad_rgb=tuple(int(round(255 * m)) for m in mean),
        inlier_size=tuple(data_cfg["inlier"]["resize"]) if data_cfg["inlier"]["resize"] else None,
        flip_prob=float(data_cfg["flip_prob"]),
        scales=tuple(float(s) for s in out["scales"]),
        relative_scale=float(out["relative_scale"]),
        paste_prob=float(out["paste_prob"]),
        object_flip_prob=float(out["flip_prob"]),
        object_colour_jitter=float(out["colour_jitter"]),
    )
    return OutlierExposureDataset(inliers, outliers, transform, seed)


def worker_init(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops at the next iteration
    boundary (a worker killed by SIGINT would break the loader).

    Workers must not call ``cv2.setNumThreads``: in a process forked after OpenCV started its
    thread pool, that call waits forever for the parent's pool threads.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: OutlierExposureDataset, sampler: IterationBatchSampler, num_workers: int,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate, pin_memory=pin_memory,
                                       worker_init_fn=worker_init if num_workers > 0 else None)
