"""Where the road is in every inlier frame, by the frozen closed-set network's own labels, computed once.

On-road pasting (:class:`~rpl_training.transforms.RoadPlacement`) needs each inlier frame's
drivable surface. Most inlier sources have no labels (video frames), and the segmenter that is
being taught is the one whose notion of "road" matters, so the masks are its own predictions:
the frame at its training resolution (the source's ``resize``) through the closed-set network at
that size (rounded up to its size divisor), pixels of the ``classes`` train ids (default road).

They are cached as PNG files (0 / 255) under ``cache_dir/<closed-set weights hash>_<classes>/`` named
by the frame's path below the folder that holds its source's root (so the dataset folder's own name is
part of it: two sources with the same layout do not share masks) and the size. Every run with the same
segmenter reuses them: also from a model file whose RPL branch is another (the masks do not depend on
it), and on another machine whose data lie elsewhere (``scripts/train_gpu_long.py`` carries them); an
interrupted preparation resumes.
"""

import hashlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from rpl_perception.image import resize_rgb

__all__ = ["RoadMasks", "closed_set_digest"]


def closed_set_digest(model_path: Path) -> str:
    """SHA-256 of the closed-set network's weights in a model file (names, then values, in name order)."""
    from rpl_perception.checkpoint import load_model

    network, _ = load_model(model_path, with_branch=False)
    digest = hashlib.sha256()
    for name, tensor in sorted(network.closed_set.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _round_up(value: int, divisor: int) -> int:
    return -(-int(value) // divisor) * divisor


class RoadMasks:
    """Road masks of ``inliers`` (one source or a :class:`~rpl_training.sample_stream.ConcatSources`).

    ``sizes``: each source's training resolution (width, height), or None for its native size.
    """

    def __init__(self, inliers, sizes: Sequence[Optional[Tuple[int, int]]], model_path: Path, cache_dir: Path,
                 classes: Sequence[int] = (0,)):
        self.inliers = inliers
        self.sources = list(getattr(inliers, "sources", [inliers]))
        if len(sizes) != len(self.sources):
            raise ValueError(f"{len(sizes)} sizes for {len(self.sources)} inlier sources")
        self.sizes = [None if s is None else (int(s[0]), int(s[1])) for s in sizes]
        # frames are named below the folder holding the source's root: the root's own name (the dataset's
        # folder, or a video file: its frames are "<video>#frame<N>") stays in the name
        roots = [getattr(source, "root", None) for source in self.sources]
        self.bases = [None if r is None else Path(r).parent for r in roots]
        self.model_path = Path(model_path)
        self.classes = tuple(int(c) for c in classes)
        key = f"{closed_set_digest(self.model_path)[:12]}_{'-'.join(str(c) for c in self.classes)}"
        self.folder = Path(cache_dir) / key

    def _source_of(self, index: int) -> int:
        return self.inliers.source_of(index) if len(self.sources) > 1 else 0

    def frame_key(self, index: int) -> str:
        """The frame's description below the folder holding its source's root (the same wherever the data
        lie); the whole description for a source without a root."""
        description = Path(self.inliers.describe(index))
        base = self.bases[self._source_of(index)]
        return (description.relative_to(base).as_posix() if base is not None and description.is_relative_to(base)
                else str(description))

    def path(self, index: int) -> Path:
        size = self.sizes[self._source_of(index)]
        digest = hashlib.sha1(self.frame_key(index).encode()).hexdigest()[:20]
        return self.folder / f"{'native' if size is None else f'{size[0]}x{size[1]}'}_{digest}.png"

    def read(self, index: int, image: np.ndarray) -> Optional[np.ndarray]:
        """The mask of frame ``index`` (uint8, 1 = road) at the size the training resizes ``image``
        to; None if it is not prepared."""
        mask = cv2.imread(str(self.path(index)), cv2.IMREAD_GRAYSCALE)
        size = self.sizes[self._source_of(index)] or (image.shape[1], image.shape[0])
        if mask is None or (mask.shape[1], mask.shape[0]) != tuple(size):
            return None
        return (mask > 127).astype(np.uint8)

    def missing(self) -> List[int]:
        """Indices whose mask is not cached yet."""
        return [i for i in range(len(self.inliers)) if not self.path(i).is_file()]

    def prepare(self, batch_size: int = 8, show_progress: bool = True) -> int:
        """Compute and cache the missing masks → how many were computed. Unreadable frames are skipped
        (the training skips them too)."""
        from rpl_perception.checkpoint import load_model
        from rpl_perception.segmenter import AnomalySegmenter

        from .datasets import UnreadableImage

        todo = self.missing()
        if not todo:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        network, meta = load_model(self.model_path, with_branch=False)
        segmenters = {}
        done = 0
        with tqdm(total=len(todo), desc="road masks", unit="frame", disable=not show_progress) as progress:
            for start in range(0, len(todo), batch_size):
                frames = {}
                for index in todo[start:start + batch_size]:
                    try:
                        image = self.inliers.read(index)[0]
                    except UnreadableImage:
                        continue
                    size = self.sizes[self._source_of(index)] or (image.shape[1], image.shape[0])
                    frames.setdefault(size, []).append((index, resize_rgb(image, size)))
                for size, items in frames.items():
                    if size not in segmenters:
                        rounded = tuple(_round_up(side, network.size_divisor) for side in size)
                        segmenters[size] = AnomalySegmenter(network, meta, score="energy", network_size=rounded)
                    predictions = segmenters[size].predict_batch([image for _, image in items])
                    for (index, _), prediction in zip(items, predictions):
                        mask = np.isin(prediction.labels, self.classes).astype(np.uint8) * 255
                        path = self.path(index)
                        tmp = path.with_name(path.stem + ".tmp.png")
                        cv2.imwrite(str(tmp), mask)
                        tmp.replace(path)
                        done += 1
                progress.update(len(todo[start:start + batch_size]))
        return done
