"""Per-camera counters and timings, summarised as a diagnostic status (ROS-free).

Callbacks report received and dropped frames, the worker rejected, failed and published ones;
``report`` is called about once a second and summarises the period since the previous call.
Levels are those of ``diagnostic_msgs/DiagnosticStatus``.
"""

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["OK", "WARN", "ERROR", "StatusReport", "CameraStats"]

OK, WARN, ERROR = 0, 1, 2

#: timings kept per period at most (bounded even if report() is never called)
MAX_SAMPLES = 10_000


@dataclass
class StatusReport:
    level: int
    message: str
    values: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class _Counts:
    received: int = 0
    dropped: int = 0
    rejected: int = 0
    failed: int = 0
    published: int = 0


class CameraStats:
    """Thread-safe statistics of one camera. Times are seconds from one monotonic clock."""

    def __init__(self, now: float, stale_after: float = 3.0):
        self.stale_after = stale_after
        self.total = _Counts()
        self._lock = threading.Lock()
        self._period = _Counts()
        self._period_start = now
        self._latencies = deque(maxlen=MAX_SAMPLES)
        self._inference = deque(maxlen=MAX_SAMPLES)
        self._batch_sizes = deque(maxlen=MAX_SAMPLES)
        self._last_received: Optional[float] = None
        self._last_rejection = ""
        self._last_failure = ""

    def _count(self, name: str) -> None:
        setattr(self.total, name, getattr(self.total, name) + 1)
        setattr(self._period, name, getattr(self._period, name) + 1)

    def on_received(self, now: float) -> None:
        with self._lock:
            self._count("received")
            self._last_received = now

    def on_dropped(self) -> None:
        """A frame was replaced by a newer one before the worker took it."""
        with self._lock:
            self._count("dropped")

    def on_rejected(self, reason: str) -> None:
        """A message could not be read as an image (bad encoding, size, data)."""
        with self._lock:
            self._count("rejected")
            self._last_rejection = reason

    def on_failed(self, reason: str) -> None:
        """Inference raised on a good frame (e.g. out of GPU memory)."""
        with self._lock:
            self._count("failed")
            self._last_failure = reason

    def on_published(self, latency: float, inference: float, batch_size: int) -> None:
        with self._lock:
            self._count("published")
            self._latencies.append(latency)
            self._inference.append(inference)
            self._batch_sizes.append(batch_size)

    def report(self, now: float) -> StatusReport:
        """Summarise the period since the last report and start a new one."""
        with self._lock:
            period, self._period = self._period, _Counts()
            latencies, inference, batches = (np.array(d, np.float64) for d in
                                             (self._latencies, self._inference, self._batch_sizes))
            for samples in (self._latencies, self._inference, self._batch_sizes):
                samples.clear()
            seconds = max(now - self._period_start, 1e-9)
            self._period_start = now
            last_received = self._last_received
            total = _Counts(**vars(self.total))
            last_rejection, last_failure = self._last_rejection, self._last_failure

        level, reasons = OK, []
        if period.failed:
            level = ERROR
            reasons.append(f"inference failed on {period.failed} frames: {last_failure}")
        if period.rejected:
            level = max(level, ERROR if period.published == 0 else WARN)
            reasons.append(f"{period.rejected} of {period.received} messages rejected: {last_rejection}")
        if last_received is None:
            level = max(level, WARN)
            reasons.append("no frame received yet")
        elif now - last_received > self.stale_after:
            level = max(level, WARN)
            reasons.append(f"no frame for {now - last_received:.1f} s")
        if period.dropped > period.published:
            level = max(level, WARN)
            reasons.append(f"dropped {period.dropped} of {period.received} frames: "
                           "inference slower than input")
        p50, p95 = np.percentile(latencies, [50, 95]) * 1e3 if latencies.size else (np.nan, np.nan)
        values = [
            ("input rate [Hz]", f"{period.received / seconds:.2f}"),
            ("output rate [Hz]", f"{period.published / seconds:.2f}"),
            ("latency p50 [ms]", _ms(p50)),
            ("latency p95 [ms]", _ms(p95)),
            ("inference [ms]", _ms(inference.mean() * 1e3 if inference.size else np.nan)),
            ("batch size", f"{batches.mean():.2f}" if batches.size else "n/a"),
            ("received frames", str(total.received)),
            ("published frames", str(total.published)),
            ("dropped frames", str(total.dropped)),
            ("rejected messages", str(total.rejected)),
            ("failed inferences", str(total.failed)),
            ("last rejection", last_rejection),
        ]
        message = "; ".join(reasons) if reasons else (
            f"{period.received / seconds:.1f} Hz in, {period.published / seconds:.1f} Hz out")
        return StatusReport(level, message, values)


def _ms(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.1f}"
