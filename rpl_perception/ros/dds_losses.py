"""Frames a camera sent that never reached the node, counted and said in the terminal (ROS-free).

Two sources, because neither sees every loss:

* DDS's message-lost events (``CameraStats.on_lost``): the reader sees the writer's sequence numbers
  skip (e.g. a frame too large for the writer's shared-memory segment). Fast DDS 3 raises them for
  reliable readers too (frames the writer gave up on), measured with scripts/bench_delivery.py; other
  RMWs and versions may not.
* Gaps between the header stamps of the frames received (:class:`StampGaps`): a camera stamps its
  frames at a steady period; the period is estimated from the shortest recent intervals and every
  longer interval counts ``round(interval / period) - 1`` missing frames. This sees reliable-mode
  losses too, but it is an estimate: a camera that skips frames itself, or stamps irregularly, is
  counted the same. Intervals over ``MAX_GAP_S`` (a paused camera) and stamps going back (a restart,
  a bag loop) are not counted.

The node's loss figure is the events where there are any, else the estimate (both are in the
diagnostics), and
:class:`LossLog` writes it to the terminal once at the first loss and then at most every
``LOG_PERIOD_S``, with the one-line fix for the DDS in use.
"""

import struct
from collections import deque
from typing import Optional

import numpy as np

__all__ = ["MAX_GAP_S", "LOG_PERIOD_S", "header_stamp_ns", "StampGaps", "LossLog", "fix_hint"]

#: longer intervals between frames are a paused camera, not losses
MAX_GAP_S = 2.0
#: the terminal's loss line comes at most this often (the first at once)
LOG_PERIOD_S = 30.0
#: intervals kept to estimate the camera's period, and the fewest needed before counting
_INTERVALS, _MIN_INTERVALS = 100, 10


def header_stamp_ns(raw: bytes) -> Optional[int]:
    """The header stamp of a serialised sensor_msgs/Image or CompressedImage (both start with
    std_msgs/Header, whose stamp follows the 4-byte CDR encapsulation), without deserialising;
    None for a zero stamp or bytes too short to hold one."""
    if len(raw) < 12:
        return None
    little = raw[1] & 1  # encapsulation CDR_LE (0x0001) or CDR_BE (0x0000)
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    stamp = sec * 1_000_000_000 + nanosec
    return stamp or None


class StampGaps:
    """Frames missing between consecutive header stamps of one camera; not thread-safe (the camera's
    subscription callback is its only caller)."""

    def __init__(self):
        self.missing = 0
        self._last: Optional[int] = None
        self._intervals = deque(maxlen=_INTERVALS)

    @property
    def period_ns(self) -> Optional[float]:
        if len(self._intervals) < _MIN_INTERVALS:
            return None
        return float(np.percentile(self._intervals, 10))

    def add(self, stamp_ns: Optional[int]) -> int:
        """Note a received frame's stamp; returns the frames found missing before it."""
        if stamp_ns is None:
            return 0
        last, self._last = self._last, stamp_ns
        if last is None or stamp_ns <= last or stamp_ns - last > MAX_GAP_S * 1e9:
            return 0
        interval = stamp_ns - last
        period = self.period_ns
        self._intervals.append(interval)
        if period is None or period <= 0:
            return 0
        gap = max(0, round(interval / period) - 1)
        self.missing += gap
        return gap


def fix_hint(rmw: str, profile: Optional[str], profile_variable: str = "FASTDDS_DEFAULT_PROFILES_FILE") -> str:
    """The one-line fix for frames DDS loses between the camera's process and the node's."""
    if rmw.startswith("rmw_fastrtps"):
        where = profile or "<rpl_perception share>/config/fastdds.xml"
        return (f"start the camera's process with {profile_variable}={where} (its Fast DDS writer needs a "
                "shared-memory segment larger than a frame; README: Camera frames from other processes)")
    if rmw.startswith("rmw_cyclonedds"):
        return ("raise net.core.rmem_max and start the camera's process and the node with "
                "CYCLONEDDS_URI=<rpl_perception share>/config/cyclonedds.xml (README: Camera frames from "
                "other processes)")
    return f"configure {rmw} for large samples between processes (README: Camera frames from other processes)"


class LossLog:
    """When to write a camera's losses to the terminal: the first at once, then every LOG_PERIOD_S."""

    def __init__(self, period_s: float = LOG_PERIOD_S):
        self.period_s = period_s
        self._logged_total = 0
        self._last_line: Optional[float] = None

    def line(self, topic: str, lost_total: int, received_total: int, hint: str, now: float) -> Optional[str]:
        """The line to log now (None: nothing new, or too soon). Totals since the node started."""
        new = lost_total - self._logged_total
        if new <= 0 or (self._last_line is not None and now - self._last_line < self.period_s):
            return None
        since = "since start" if self._last_line is None else f"in the last {now - self._last_line:.0f} s"
        self._logged_total, self._last_line = lost_total, now
        sent = lost_total + received_total
        return (f"{topic}: {new} frames lost before they reached the node {since} ({lost_total} of {sent} "
                f"in all, {100 * lost_total / max(sent, 1):.0f} %). Fix: {hint}")
