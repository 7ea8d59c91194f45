"""From subscription callbacks to batched inference: one decoder thread per camera, one worker (ROS-free).

``put`` (called by a subscription callback) only stores the raw message as its camera's newest. The
camera's decoder thread turns it into pixels (deserialise, check the size, decode), so a camera that
sends costly or hostile frames delays only itself. The worker takes every decoded frame waiting, from
all cameras, and runs them as one batch through one model. Each stage holds at most one frame per
camera: a frame still waiting when its camera's next one arrives is replaced (``on_replaced``), so
latency stays bounded by one inference under overload, and a frame that will be replaced anyway
costs no more than keeping its bytes.
"""

import threading
import time
from typing import Any, Callable, Dict, Hashable, List, Sequence, Tuple

from .frame_buffer import LatestFrameBuffer

__all__ = ["FramePipeline"]

#: how often idle threads look at the stop flag (they are woken at once by stop() anyway)
IDLE_WAKE_S = 1.0


class FramePipeline:
    """``decode(camera, raw) → frame or None`` (None: rejected, already reported);
    ``process([(camera, frame), ...])`` runs one batch; ``on_replaced(camera)`` counts a frame
    replaced before use; ``on_error(cameras, exception)`` reports what decode or process raised on
    the frames of ``cameras`` (the threads keep running)."""

    def __init__(self, cameras: Sequence[Hashable], decode: Callable[[Hashable, Any], Any],
                 process: Callable[[List[Tuple[Hashable, Any]]], None],
                 on_replaced: Callable[[Hashable], None],
                 on_error: Callable[[List[Hashable], BaseException], None]):
        self._decode, self._process = decode, process
        self._on_replaced, self._on_error = on_replaced, on_error
        self._raw: Dict[Hashable, LatestFrameBuffer] = {camera: LatestFrameBuffer() for camera in cameras}
        self._decoded = LatestFrameBuffer()
        self.stopping = threading.Event()
        self._threads = [threading.Thread(target=self._decode_loop, args=(camera,), daemon=True,
                                          name=f"rpl_decode_{i}") for i, camera in enumerate(cameras)]
        self._worker = threading.Thread(target=self._work, name="rpl_anomaly_worker", daemon=True)
        self._threads.append(self._worker)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def put(self, camera: Hashable, raw: Any) -> None:
        if self._raw[camera].put(camera, raw):
            self._on_replaced(camera)

    @property
    def working(self) -> bool:
        """The inference worker is running."""
        return self._worker.is_alive() and not self.stopping.is_set()

    def stop(self, timeout: float) -> bool:
        """Wake every thread for good and wait up to ``timeout`` s in all; True if all ended. A batch
        in flight is not interrupted: its thread (a daemon) finishes it without publishing, since
        ``process`` is expected to check :attr:`stopping`."""
        self.stopping.set()
        for buffer in (*self._raw.values(), self._decoded):
            buffer.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _decode_loop(self, camera: Hashable) -> None:
        buffer = self._raw[camera]
        while (taken := buffer.take(timeout=IDLE_WAKE_S)) is not None:
            if not taken or self.stopping.is_set():
                continue
            try:
                frame = self._decode(camera, taken[camera])
            except Exception as exc:  # noqa: BLE001 - a bug on one frame must not stop the camera
                self._on_error([camera], exc)
                continue
            if frame is not None and self._decoded.put(camera, frame):
                self._on_replaced(camera)

    def _work(self) -> None:
        while (frames := self._decoded.take(timeout=IDLE_WAKE_S)) is not None:
            if not frames or self.stopping.is_set():
                continue
            try:
                self._process(list(frames.items()))
            except Exception as exc:  # noqa: BLE001 - a bug on one batch must not stop the node
                self._on_error(list(frames), exc)
