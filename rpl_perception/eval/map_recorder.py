"""``eval --record`` in offline mode: the frames, their ground truth and the maps the model gave, as a
new bag laid out as ``ros2 bag record`` stores the node's outputs, which ``eval --mode recorded`` reads.

The bag is written beside its destination and moved there only when the run succeeds (:meth:`finish`),
so a failed run leaves no half-written bag.
"""

import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from .bags import ImageBagWriter
from .frames import BagTopics

__all__ = ["MapRecorder"]


class MapRecorder:
    """Observer of an :class:`~rpl_perception.eval.evaluation.Evaluation` that records every frame."""

    def __init__(self, path, image_topic: str):
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"--record {self.path} exists already; choose a new bag path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        self.topics = BagTopics.for_camera(image_topic)
        self._bag = ImageBagWriter(self._staging / "bag").__enter__()

    def add(self, frame, score_name: str, score: np.ndarray, labels: Optional[np.ndarray] = None,
            latency_s: Optional[float] = None) -> None:
        stamp, bag, topics = frame.stamp_ns or 0, self._bag, self.topics
        if frame.compressed is not None:  # kept as recorded, on its /compressed topic
            bag.write_compressed(topics.image, None, stamp, fmt=frame.compressed[0], encoded=frame.compressed[1],
                                 frame_id="camera")
        elif frame.image is not None:
            bag.write(topics.image, frame.image, stamp, encoding="rgb8", frame_id="camera")
        for topic, truth in ((topics.label, frame.label), (topics.semantic, frame.semantic)):
            if truth is not None:
                bag.write(topic, truth, stamp, encoding="mono8", frame_id="camera")
        bag.write(topics.anomaly, np.ascontiguousarray(score, np.float32), stamp, encoding="32FC1", frame_id="camera")
        if labels is not None:
            bag.write(topics.semantic_prediction, labels, stamp, encoding="mono8", frame_id="camera")

    def finish(self) -> Path:
        self._bag.__exit__(None, None, None)
        if self.path.exists():
            raise FileExistsError(f"--record {self.path} appeared while the run went on; the bag stays in "
                                  f"{self._staging / 'bag'}")
        shutil.move(str(self._staging / "bag"), str(self.path))
        shutil.rmtree(self._staging, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        try:
            self._bag.__exit__(None, None, None)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
