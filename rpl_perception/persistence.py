"""Objects that stay: published once seen in ``k`` of the last ``n`` frames, with a stable id.

Each frame's objects are matched to the tracks of the frames before by box overlap (IoU, greedy,
best pairs first). A track is confirmed — and gets its id, counting up from 1 — when it was seen in
``k`` of its last ``n`` frames, and is published in every frame it is seen in while it keeps ``k`` of
``n``; a track not seen in ``n`` frames is forgotten. One tracker per camera. ``k = n = 1`` passes
every object through (each with a fresh id whenever it is not matched).
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Deque, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["box_iou", "box_ious", "Track", "ObjectTracker"]

Box = Tuple[float, float, float, float]


def box_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """N×M intersection over union of N×4 and M×4 (x0, y0, x1, y1) boxes (x1, y1 exclusive)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4)[:, None], np.asarray(b, np.float64).reshape(-1, 4)[None]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (x1, y1 exclusive)."""
    return float(box_ious(a, b)[0, 0])


@dataclass
class Track:
    box: Box
    seen: Deque[bool] = field(default_factory=deque)
    id: Optional[int] = None  # set when confirmed

    @property
    def hits(self) -> int:
        return sum(self.seen)


class ObjectTracker:
    """``update(objects)`` → [(id, object)] of this frame's confirmed objects; objects need ``.box``."""

    def __init__(self, k: int = 2, n: int = 3, min_iou: float = 0.3):
        if not 1 <= k <= n:
            raise ValueError(f"persistence needs 1 <= k <= n; got k={k}, n={n}")
        if not 0 < min_iou <= 1:
            raise ValueError(f"min_iou must be in (0, 1]; got {min_iou}")
        self.k, self.n, self.min_iou = k, n, min_iou
        self.tracks: List[Track] = []
        self._next_id = 1

    def reset(self) -> None:
        self.tracks.clear()

    def _match(self, boxes: Sequence[Box]) -> List[Tuple[int, int]]:
        """(track index, object index) pairs, greedy by IoU."""
        if not boxes or not self.tracks:
            return []
        iou = box_ious([t.box for t in self.tracks], boxes)
        pairs = []
        while True:
            t, o = np.unravel_index(np.argmax(iou), iou.shape)
            if iou[t, o] < self.min_iou:
                return pairs
            pairs.append((int(t), int(o)))
            iou[t, :] = -1
            iou[:, o] = -1

    def update(self, objects: Sequence) -> List[Tuple[int, object]]:
        boxes = [tuple(map(float, obj.box)) for obj in objects]
        matched = dict((o, t) for t, o in self._match(boxes))
        seen_tracks = set(matched.values())
        for index, track in enumerate(self.tracks):
            if index not in seen_tracks:
                track.seen.append(False)
        for o, box in enumerate(boxes):
            if o in matched:
                track = self.tracks[matched[o]]
                track.box = box
                track.seen.append(True)
            else:
                self.tracks.append(Track(box, deque([True])))
                matched[o] = len(self.tracks) - 1
        for track in self.tracks:
            while len(track.seen) > self.n:
                track.seen.popleft()
        confirmed = []
        for o, obj in enumerate(objects):
            track = self.tracks[matched[o]]
            if track.hits >= self.k:
                if track.id is None:
                    track.id, self._next_id = self._next_id, self._next_id + 1
                confirmed.append((track.id, obj))
        self.tracks = [t for t in self.tracks if t.hits > 0]
        return confirmed
