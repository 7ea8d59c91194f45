"""From subscription callbacks to batched inference: decoded on demand, per camera (ROS-free).

``put`` (called by a subscription callback) only keeps the serialised message as its camera's newest:
a frame replaced before the worker asks for it costs nothing more than its bytes. When the worker is
ready for a batch it hands each camera's newest frame to that camera's decoder thread (deserialise,
check the size, decode), waits at most ``DECODE_WAIT_S`` for them and runs every frame decoded by
then, from all cameras, as one batch through one model. A decode that takes longer (a huge or
hostile frame) carries on in its own thread and joins a later batch: one camera cannot stall the
others. Each camera has at most one frame waiting and one being decoded, so under overload latency
stays bounded by one inference and memory by the number of cameras.
"""

import threading
import time
from typing import Any, Callable, Dict, Hashable, List, Sequence, Tuple

__all__ = ["FramePipeline", "DECODE_WAIT_S"]

#: the longest the worker waits for the cameras' decoders before running a batch without the slow ones
DECODE_WAIT_S = 0.2
#: how often idle threads look at the stop flag (stop() wakes them at once anyway)
IDLE_WAKE_S = 1.0


class _Decoder:
    """One camera's decoding thread, one job at a time. ``busy``, ``done`` and ``result`` belong to
    the pipeline's lock."""

    def __init__(self, camera: Hashable, name: str, pipeline: "FramePipeline"):
        self.camera, self.pipeline = camera, pipeline
        self.busy = self.done = False
        self.result = None
        self._job = None
        self._has_job = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def submit(self, raw: Any) -> None:
        with self._has_job:
            self._job = raw
            self._has_job.notify()

    def wake(self) -> None:
        with self._has_job:
            self._has_job.notify()

    def _run(self) -> None:
        pipeline = self.pipeline
        while True:
            with self._has_job:
                self._has_job.wait_for(lambda: self._job is not None or pipeline.stopping.is_set(), IDLE_WAKE_S)
                if pipeline.stopping.is_set():
                    return
                if self._job is None:
                    continue
                raw, self._job = self._job, None
            try:
                result = pipeline._decode(self.camera, raw)
            except Exception as exc:  # noqa: BLE001 - a bug on one frame must not stop the camera
                pipeline._on_error([self.camera], exc)
                result = None
            with pipeline._lock:
                self.result, self.busy, self.done = result, False, True
                pipeline._changed.notify_all()


class FramePipeline:
    """``decode(camera, raw) → frame or None`` (None: rejected, already reported);
    ``process([(camera, frame), ...])`` runs one batch; ``on_replaced(camera)`` counts a frame
    replaced by a newer one before use; ``on_error(cameras, exception)`` reports what decode or
    process raised on the frames of ``cameras`` (the threads keep running)."""

    def __init__(self, cameras: Sequence[Hashable], decode: Callable[[Hashable, Any], Any],
                 process: Callable[[List[Tuple[Hashable, Any]]], None],
                 on_replaced: Callable[[Hashable], None],
                 on_error: Callable[[List[Hashable], BaseException], None]):
        self._decode, self._process = decode, process
        self._on_replaced, self._on_error = on_replaced, on_error
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._newest: Dict[Hashable, Any] = {}  # camera → newest frame not yet handed to its decoder
        self._decoders = {camera: _Decoder(camera, f"rpl_decode_{i}", self) for i, camera in enumerate(cameras)}
        self.stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="rpl_anomaly_worker", daemon=True)

    def start(self) -> None:
        for decoder in self._decoders.values():
            decoder.thread.start()
        self._worker.start()

    def put(self, camera: Hashable, raw: Any) -> None:
        with self._lock:
            replaced = camera in self._newest
            self._newest[camera] = raw
            self._changed.notify_all()
        if replaced:
            self._on_replaced(camera)

    @property
    def working(self) -> bool:
        """The inference worker is running."""
        return self._worker.is_alive() and not self.stopping.is_set()

    def stop(self, timeout: float) -> bool:
        """Wake every thread for good and wait up to ``timeout`` s in all; True if all ended. A batch or
        decode in flight is not interrupted: its thread (a daemon) finishes it, and ``process`` is
        expected to check :attr:`stopping` before publishing."""
        self.stopping.set()
        with self._lock:
            self._newest.clear()
            self._changed.notify_all()
        for decoder in self._decoders.values():
            decoder.wake()
        deadline = time.monotonic() + timeout
        threads = [self._worker, *(decoder.thread for decoder in self._decoders.values())]
        for thread in threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    # -- the worker ---------------------------------------------------------------------------------

    def _dispatchable(self) -> List[_Decoder]:
        return [d for c, d in self._decoders.items() if c in self._newest and not d.busy and not d.done]

    def _work(self) -> None:
        while not self.stopping.is_set():
            with self._changed:
                self._changed.wait_for(lambda: self.stopping.is_set() or self._dispatchable()
                                       or any(d.done for d in self._decoders.values()), IDLE_WAKE_S)
                jobs = []
                for decoder in self._dispatchable():
                    decoder.busy = True
                    jobs.append((decoder, self._newest.pop(decoder.camera)))
            for decoder, raw in jobs:
                decoder.submit(raw)
            with self._changed:
                self._changed.wait_for(lambda jobs=jobs: self.stopping.is_set() or not any(d.busy for d, _ in jobs),
                                       DECODE_WAIT_S)
                batch = []
                for decoder in self._decoders.values():
                    if decoder.done:
                        if decoder.result is not None:
                            batch.append((decoder.camera, decoder.result))
                        decoder.done, decoder.result = False, None
            if batch and not self.stopping.is_set():
                try:
                    self._process(batch)
                except Exception as exc:  # noqa: BLE001 - a bug on one batch must not stop the node
                    self._on_error([camera for camera, _ in batch], exc)
