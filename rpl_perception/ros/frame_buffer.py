"""The hand-over from subscription callbacks to the inference worker: the newest frame per camera.

Callbacks ``put`` and return at once; the worker ``take``s every waiting frame and runs them as one
batch. A frame still waiting when its camera's next one arrives is replaced (and counted as
dropped by the caller), so at most one frame per camera is ever held: under overload latency
stays bounded by one inference, not by a queue.
"""

import threading
from typing import Any, Dict, Optional

__all__ = ["LatestFrameBuffer"]


class LatestFrameBuffer:
    def __init__(self):
        self._frames: Dict[Any, Any] = {}
        self._ready = threading.Condition()
        self._closed = False

    def put(self, camera, frame) -> bool:
        """Keep ``frame`` as the newest of ``camera``; True if it replaced an unprocessed one."""
        with self._ready:
            replaced = camera in self._frames
            self._frames[camera] = frame
            self._ready.notify()
        return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[Dict[Any, Any]]:
        """All waiting frames by camera (emptying the buffer); {} on timeout, None once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._frames or self._closed, timeout)
            if self._closed:
                return None
            frames, self._frames = self._frames, {}
            return frames

    def close(self) -> None:
        """Wake the worker for good: later ``take`` calls return None."""
        with self._ready:
            self._closed = True
            self._frames.clear()
            self._ready.notify_all()

    def __len__(self) -> int:
        with self._ready:
            return len(self._frames)
