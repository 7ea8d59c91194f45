"""Per-camera counters and timings, summarised as a diagnostic status (ROS-free).

Every frame a camera publishes ends in exactly one count: ``lost`` (DDS never delivered it: the
subscription's message-lost events), ``unread`` (delivered while nobody subscribed to the camera's
outputs: not decoded, see :mod:`.demand`), ``dropped`` (delivered, then replaced by a newer frame of the
same camera before the worker took it: the node's newest-frame policy), ``rejected`` (not an image
the node accepts), ``failed`` (inference or publishing raised) or ``published``.

Callbacks report received, lost and dropped frames, the worker rejected, failed and published ones;
``report`` is called about once a second and summarises the period since the previous call.
Levels are those of ``diagnostic_msgs/DiagnosticStatus``; dropped frames are the newest-frame policy at
work, a value and not a warning: the level follows the output rate (:mod:`.health`).
"""

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .dds import LARGE_FRAME_HINT
from .dds_losses import StampGaps
from .health import ERROR, OK, WARN, EventWindow, HealthLimits, output_health

__all__ = ["OK", "WARN", "ERROR", "StatusReport", "CameraStats", "input_problems"]

#: what the status says of a camera nobody subscribes to (its frames are neither decoded nor inferred)
IDLE_MESSAGE = "idle: no subscriber to its outputs (frames are not decoded or inferred)"

#: timings kept per period at most (bounded even if report() is never called)
MAX_SAMPLES = 10_000
#: a header stamp further than this from the node's clock comes from another clock (an unsynchronised
#: camera, a bag replayed without use_sim_time): its "latency" means nothing and is not reported
FOREIGN_CLOCK_S = 60.0
#: stamps up to this far in the future are clock jitter between synchronised machines
FUTURE_TOLERANCE_S = 1.0


@dataclass
class StatusReport:
    level: int
    message: str
    values: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class _Counts:
    received: int = 0
    lost: int = 0
    stamp_gaps: int = 0  # not a frame's count: an estimate of frames that never came (.dds_losses)
    unread: int = 0
    dropped: int = 0
    rejected: int = 0
    failed: int = 0
    published: int = 0
    foreign_stamps: int = 0


class CameraStats:
    """Thread-safe statistics of one camera. Times are seconds from one monotonic clock."""

    def __init__(self, now: float, stale_after: float = 3.0, limits: Optional[HealthLimits] = None):
        self.stale_after = stale_after
        self.limits = limits or HealthLimits()
        self._active_since: Optional[float] = now  # None while idle
        self._received_times, self._published_times = EventWindow(), EventWindow()
        self._last_published: Optional[float] = None
        self._stamp_gaps = StampGaps()
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
        self._clock_offset = 0.0

    def _count(self, name: str, n: int = 1) -> None:
        setattr(self.total, name, getattr(self.total, name) + n)
        setattr(self._period, name, getattr(self._period, name) + n)

    @property
    def last_received(self) -> Optional[float]:
        return self._last_received

    def on_received(self, now: float, stamp_ns: Optional[int] = None) -> None:
        """``stamp_ns``: the frame's header stamp, where known (gaps between stamps count as missing)."""
        with self._lock:
            self._count("received")
            self._count("stamp_gaps", self._stamp_gaps.add(stamp_ns))
            self._last_received = now
            self._received_times.add(now)

    def loss_totals(self) -> Tuple[int, int]:
        """(frames lost before reaching the node, frames received) since the start; lost: DDS's
        message-lost events where there are any (Fast DDS 3 raises them for reliable readers too), else
        the header-stamp estimate (an RMW without the events; it over- or undercounted the events by up
        to a third in scripts/bench_delivery.py)."""
        with self._lock:
            return self.total.lost or self.total.stamp_gaps, self.total.received

    def on_lost(self, count: int) -> None:
        """DDS reports ``count`` frames it never delivered (best effort: a gap or an incomplete frame)."""
        with self._lock:
            self._count("lost", count)

    def on_unread(self) -> None:
        """A frame arrived while nobody subscribed to the camera's outputs: left alone."""
        with self._lock:
            self._count("unread")

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
        """Inference or publishing raised on a good frame (e.g. out of GPU memory)."""
        with self._lock:
            self._count("failed")
            self._last_failure = reason

    def on_published(self, latency: float, inference: float, batch_size: int, now: Optional[float] = None) -> None:
        """``latency``: seconds from the frame's header stamp to publication, on the node's clock;
        ``now``: the monotonic time of publication (default: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._count("published")
            self._last_published = now
            self._published_times.add(now)
            if latency > FOREIGN_CLOCK_S or latency < -FUTURE_TOLERANCE_S:
                self._count("foreign_stamps")
                self._clock_offset = latency
            else:
                self._latencies.append(latency)
            self._inference.append(inference)
            self._batch_sizes.append(batch_size)

    def report(self, now: float, problems: Sequence[Tuple[int, str]] = (), idle: bool = False) -> StatusReport:
        """Summarise the period since the last report and start a new one. ``problems``: (level,
        reason) found outside these counts, e.g. by :func:`input_problems`; ``idle``: nobody subscribes
        to the camera's outputs (OK, not judged; the output timeout restarts when it becomes active)."""
        with self._lock:
            if idle:
                self._active_since = None
            elif self._active_since is None:
                self._active_since = now
            active_since, last_published = self._active_since, self._last_published
            input_rate, output_rate = self._received_times.rate(now), self._published_times.rate(now)
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
            clock_offset = self._clock_offset

        values = _values(period, seconds, total, latencies, inference, batches, last_rejection)
        if idle:  # only a loss on the way in matters before anyone reads the outputs
            return (StatusReport(WARN, f"{IDLE_MESSAGE}; {_lost_reason(period)}", values)
                    if period.lost or period.stamp_gaps else StatusReport(OK, IDLE_MESSAGE, values))
        health = output_health(self.limits, now=now, active_since=active_since, last_published=last_published,
                               input_rate=input_rate, output_rate=output_rate)
        level, reasons = OK, []
        for problem_level, reason in [*health, *problems]:
            level = max(level, problem_level)
            reasons.append(reason)
        if period.failed:
            level = ERROR
            reasons.append(f"inference failed on {period.failed} frames: {last_failure}")
        if period.rejected:
            level = max(level, ERROR if period.published == 0 else WARN)
            reasons.append(f"{period.rejected} of {period.received} messages rejected: {last_rejection}")
        if period.lost or period.stamp_gaps:
            level = max(level, WARN)
            reasons.append(_lost_reason(period))
        if last_received is None:
            level = max(level, WARN)
            if not problems:  # the graph's reasons say more
                reasons.append("no frame received yet")
        elif now - last_received > self.stale_after:
            level = max(level, WARN)
            reasons.append(f"no frame for {now - last_received:.1f} s")
        if period.foreign_stamps:
            level = max(level, WARN)
            reasons.append(f"header stamps are {clock_offset:+.0f} s off this node's clock (camera clock not "
                           "synchronised, or a bag replayed without use_sim_time): latency not reported")
        message = "; ".join(reasons) if reasons else (
            f"{period.received / seconds:.1f} Hz in, {period.published / seconds:.1f} Hz out")
        return StatusReport(level, message, values)


def input_problems(*, publishers: int, matched: int, received: int, seconds_matched: Optional[float],
                   reliability: str, offered: Sequence[str] = (), wait_s: float = 3.0) -> List[Tuple[int, str]]:
    """Why no frame may be arriving, from the ROS graph: (level, reason) pairs for ``report``.

    ``publishers``: publishers on the topic; ``matched``: those matched to the subscription;
    ``received``: frames received so far; ``seconds_matched``: since a publisher matched (None: none
    has); ``reliability``: the subscription's; ``offered``: the publishers' reliabilities.
    """
    if publishers == 0:
        return [(WARN, "no publisher on this topic yet")]
    if matched == 0:
        return [(WARN, f"{publishers} publisher(s) on the topic but none matched: incompatible QoS "
                       f"(they offer {', '.join(sorted(set(offered))) or 'unknown'} reliability, the node "
                       f"asks for {reliability}; see qos_reliability / qos_overrides)")]
    if received == 0 and seconds_matched is not None and seconds_matched > wait_s:
        return [(WARN, f"{matched} publisher(s) matched {seconds_matched:.0f} s ago but no frame arrived: "
                       f"{LARGE_FRAME_HINT}")]
    return []


def _values(period: _Counts, seconds: float, total: _Counts, latencies: np.ndarray, inference: np.ndarray,
            batches: np.ndarray, last_rejection: str) -> List[Tuple[str, str]]:
    p50, p95 = np.percentile(latencies, [50, 95]) * 1e3 if latencies.size else (np.nan, np.nan)
    return [
        ("input rate [Hz]", f"{period.received / seconds:.2f}"),
        ("output rate [Hz]", f"{period.published / seconds:.2f}"),
        ("dropped rate [Hz]", f"{period.dropped / seconds:.2f}"),  # replaced by a newer frame: by design
        ("latency p50 [ms]", _ms(p50)),
        ("latency p95 [ms]", _ms(p95)),
        ("inference [ms]", _ms(inference.mean() * 1e3 if inference.size else np.nan)),
        ("batch size", f"{batches.mean():.2f}" if batches.size else "n/a"),
        ("received frames", str(total.received)),
        ("published frames", str(total.published)),
        ("dropped frames", str(total.dropped)),
        ("unread frames (idle)", str(total.unread)),
        ("DDS lost frames", str(total.lost)),
        ("frames missing between header stamps", str(total.stamp_gaps)),
        ("rejected messages", str(total.rejected)),
        ("failed inferences", str(total.failed)),
        ("foreign-clock stamps", str(total.foreign_stamps)),
        ("last rejection", last_rejection),
    ]


def _lost_reason(period: _Counts) -> str:
    if period.lost:
        return (f"DDS lost {period.lost} of {period.lost + period.received} frames before they reached the "
                f"node: {LARGE_FRAME_HINT}")
    return (f"{period.stamp_gaps} of {period.stamp_gaps + period.received} frames missing between the header "
            f"stamps received (estimated; a reliable camera's writer drops frames DDS cannot deliver in time): "
            f"{LARGE_FRAME_HINT}")


def _ms(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.1f}"
