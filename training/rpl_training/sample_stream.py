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

from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from .config import inlier_sources
from .datasets import (
    CityscapesInliers,
    CocoOutliers,
    CutoutOutliers,
    DatasetLayoutError,
    FrameInliers,
    IDDInliers,
    UnreadableImage,
    VoidLabels,
)
from .transforms import OutlierExposure, RoadPlacement

__all__ = ["SampleKey", "ConcatSources", "OutlierExposureDataset", "IterationBatchSampler", "collate",
           "build_inliers", "build_outliers", "build_dataset", "make_loader", "worker_init"]


class SampleKey(NamedTuple):
    epoch: int
    position: int  # index in the epoch's permutation
    index: int  # inlier image index


class ConcatSources:
    """Several image sources (``len``, ``read``, ``describe``) as one; ``source_of(i)`` tells which."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def source_of(self, index: int) -> int:
        return int(np.searchsorted(self.offsets, index, side="right") - 1)

    def _locate(self, index: int):
        which = self.source_of(index)
        return self.sources[which], index - int(self.offsets[which])

    def read(self, index: int):
        source, local = self._locate(index)
        return source.read(local)

    def describe(self, index: int) -> str:
        source, local = self._locate(index)
        return source.describe(local)

    def ranges(self) -> List[range]:
        """The global indices of each source."""
        return [range(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:])]


class OutlierExposureDataset(torch.utils.data.Dataset):
    """``dataset[SampleKey]`` → dict of uint8 arrays ``image``, ``label``, ``context``,
    ``context_label`` (see :class:`~rpl_training.transforms.OutlierExposure`) and ``skipped``
    (names of files that could not be read while building it).

    ``inliers`` may be a :class:`ConcatSources` of several sources, each with its own transform
    (``transform`` is then a list, one per source: sources differ in resolution)."""

    def __init__(self, inliers, outliers, transform, seed: int, road_masks=None):
        self.inliers, self.outliers, self.seed = inliers, outliers, int(seed)
        #: :class:`~rpl_training.road_masks.RoadMasks` for on-road pasting, or None
        self.road_masks = road_masks
        self.transforms = list(transform) if isinstance(transform, (list, tuple)) else [transform]
        self.transform = self.transforms[0]

    def __len__(self) -> int:
        return len(self.inliers)

    def _transform_for(self, index: int) -> OutlierExposure:
        if len(self.transforms) == 1:
            return self.transforms[0]
        return self.transforms[self.inliers.source_of(index)]

    @staticmethod
    def _read_first_readable(source, first: int, skipped: List[str], what: str):
        """→ (image, label, the index read): a skipped inlier is replaced by the next one of the
        same source (same resolution)."""
        if isinstance(source, ConcatSources):
            which = source.source_of(first)
            offset = int(source.offsets[which])
            image, label, index = OutlierExposureDataset._read_first_readable(
                source.sources[which], first - offset, skipped, what)
            return image, label, index + offset
        for step in range(len(source)):
            index = (first + step) % len(source)
            try:
                return (*source.read(index), index)
            except UnreadableImage as exc:
                skipped.append(f"{source.describe(index)} ({exc})")
        raise RuntimeError(f"no readable {what} image: all {len(source)} files failed to load")

    def __getitem__(self, key) -> Dict[str, object]:
        epoch, position, index = key
        rng = np.random.default_rng([self.seed, int(epoch), int(position)])
        skipped: List[str] = []
        outlier_index = int(rng.integers(len(self.outliers)))
        image, label, read = self._read_first_readable(self.inliers, int(index), skipped, "inlier")
        obj_image, obj_mask, _ = self._read_first_readable(self.outliers, outlier_index, skipped, "outlier")
        road = None if self.road_masks is None else self.road_masks.read(read, image)
        sample = self._transform_for(read)(image, label, obj_image, obj_mask, rng, road=road)
        sample["skipped"] = skipped
        return sample


class IterationBatchSampler(torch.utils.data.Sampler):
    """Per-process lists of :class:`SampleKey` for iterations ``start … total − 1``.

    Iteration *i* is batch ``i mod E`` of epoch ``i div E`` (E = ⌊N / batch_size⌋, the last
    incomplete batch dropped as the official loader does); the global batch is split into
    ``world_size`` consecutive shares, this process taking share ``rank``.
    """

    def __init__(self, num_samples: int, batch_size: int, total: int, *, seed: int, start: int = 0,
                 rank: int = 0, world_size: int = 1, sources: Optional[Sequence[range]] = None,
                 weights: Optional[Sequence[float]] = None):
        if batch_size % world_size:
            raise ValueError(f"the batch size {batch_size} must be divisible by the number of processes {world_size}")
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} inlier images are fewer than one batch of {batch_size}")
        self.num_samples, self.batch_size, self.total, self.seed = num_samples, batch_size, total, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self.per_process = batch_size // world_size
        self.iterations_per_epoch = num_samples // batch_size
        self.sources = None if sources is None or len(sources) < 2 else list(sources)
        self.weights = None if self.sources is None else np.asarray(weights, dtype=np.float64)
        self._permutation = (None, None)

    def permutation(self, epoch: int) -> np.ndarray:
        """The inlier indices of ``epoch`` in order: a permutation of all of them, or, with several
        weighted sources, ``num_samples`` indices of which each source supplies its weight's share
        (a source smaller than its share is repeated, a larger one sampled without repeats)."""
        if self._permutation[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            if self.sources is None:
                order = rng.permutation(self.num_samples)
            else:
                counts = np.floor(self.num_samples * self.weights / self.weights.sum()).astype(int)
                counts[: self.num_samples - counts.sum()] += 1  # the rounding remainder, first sources first
                parts = []
                for source, count in zip(self.sources, counts):
                    repeats = -(-count // len(source))
                    drawn = np.concatenate([rng.permutation(len(source)) for _ in range(repeats)])[:count]
                    parts.append(np.asarray(source)[drawn])
                order = rng.permutation(np.concatenate(parts))
            self._permutation = (epoch, order)
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
    """Stack a list of samples: uint8 tensors (B,H,W,3) / (B,H,W); ``on_road`` a bool tensor (B,);
    ``skipped`` concatenated."""
    batch: Dict[str, object] = {key: torch.from_numpy(np.stack([s[key] for s in samples]))
                                for key in ("image", "label", "context", "context_label")}
    batch["on_road"] = torch.tensor([bool(s.get("on_road", False)) for s in samples])
    batch["skipped"] = [name for s in samples for name in s["skipped"]]
    return batch


def build_inliers(cfg: Dict[str, object]):
    """One inlier source from its config mapping (see ``DEFAULTS["data"]["inlier"]``)."""
    if cfg["kind"] == "cityscapes":
        source = CityscapesInliers(cfg["root"], cfg["split"])
    elif cfg["kind"] == "idd":
        source = IDDInliers(cfg["root"], cfg["split"])
    else:
        source = FrameInliers(cfg["root"], video_stride=cfg["video_stride"], include=cfg.get("include"))
    voids = cfg.get("void_labels") or []
    return VoidLabels(source, voids) if voids else source


def _coco_splits(root: Path, split) -> List[str]:
    if split == "all":
        return sorted(p.name[len("instances_"):-len(".json")] for p in (root / "annotations").glob("instances_*.json"))
    return [split] if isinstance(split, str) else list(split)


def build_outliers(cfg: Dict[str, object], seed: int):
    """The outlier images of every folder in ``root`` (one or a list) and, for COCO, every split;
    an image present in several folders (same file name) is used once."""
    roots = cfg["root"] if isinstance(cfg["root"], list) else [cfg["root"]]
    sources = []
    if cfg["kind"] != "coco":
        sources = [CutoutOutliers(root) for root in roots]
    else:
        seen = set()
        for root in roots:
            for split in _coco_splits(Path(root), cfg["split"]) or [str(cfg["split"])]:
                coco = CocoOutliers(root, split, filter=cfg["filter"], min_size=cfg["min_size"],
                                    excluded=cfg["excluded_classes"], max_images=cfg["max_images"], seed=seed)
                names = [coco.coco.imgs[i]["file_name"] for i in coco.image_ids]
                keep = [i for i, name in zip(coco.image_ids, names) if name not in seen]
                seen.update(names)
                if keep:
                    coco.image_ids = keep
                    sources.append(coco)
    return sources[0] if len(sources) == 1 else ConcatSources(sources)


def build_dataset(data_cfg: Dict[str, object], mean: Sequence[float], seed: int,
                  inliers=None, outliers=None) -> OutlierExposureDataset:
    """The training dataset from the ``data`` config section; layout problems of both datasets
    are reported together in one :class:`DatasetLayoutError`."""
    problems = []
    if inliers is None:
        built = []
        for source_cfg in inlier_sources(data_cfg):
            try:
                built.append(build_inliers(source_cfg))
            except DatasetLayoutError as exc:
                problems.append(f"inlier data ({source_cfg['kind']}): {exc}")
        if not problems:
            inliers = built[0] if len(built) == 1 else ConcatSources(built)
    if outliers is None:
        try:
            outliers = build_outliers(data_cfg["outlier"], seed)
        except DatasetLayoutError as exc:
            problems.append(f"outlier data ({data_cfg['outlier']['kind']}): {exc}")
    if problems:
        raise DatasetLayoutError("\n".join(problems))
    out = data_cfg["outlier"]
    road = out["on_road"]

    def transform(source_cfg) -> OutlierExposure:
        return OutlierExposure(
            crop_size=tuple(data_cfg["crop_size"]),
            pad_rgb=tuple(int(round(255 * m)) for m in mean),
            inlier_size=tuple(source_cfg["resize"]) if source_cfg["resize"] else None,
            flip_prob=float(data_cfg["flip_prob"]),
            scales=tuple(float(s) for s in out["scales"]),
            relative_scale=float(out["relative_scale"] if source_cfg.get("object_scale") is None
                                 else source_cfg["object_scale"]),
            paste_prob=float(out["paste_prob"]),
            object_flip_prob=float(out["flip_prob"]),
            object_colour_jitter=float(out["colour_jitter"]),
            road=RoadPlacement(share=float(road["share"]), height_at_bottom=tuple(road["height_at_bottom"]),
                               min_height=int(road["min_height"]), soft_edge=float(road["soft_edge"]),
                               shadow=float(road["shadow"]), rows=road["rows"],
                               horizon_quantile=float(road["horizon_quantile"])),
        )
    return OutlierExposureDataset(inliers, outliers, [transform(c) for c in inlier_sources(data_cfg)], seed)


def worker_init(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops at the next iteration
    boundary (a worker killed by SIGINT would break the loader).

    Workers must not call ``cv2.setNumThreads``: in a process forked after OpenCV started its
    thread pool, that call waits forever for the parent's pool threads.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: OutlierExposureDataset, sampler: IterationBatchSampler, num_workers: int,
                pin_memory: bool = False, collate_fn=collate) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate_fn, pin_memory=pin_memory,
                                       worker_init_fn=worker_init if num_workers > 0 else None)
