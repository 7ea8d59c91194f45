"""When a camera's outputs are healthy (ROS-free): the rules behind its diagnostic level.

The node serves the newest frame and replaces the ones inference had no time for: on a CPU a 30 Hz
camera is served at a few Hz by design, so dropped frames are a value, never a warning. What a user
needs is an output rate: the status is OK while the camera's outputs come at ``min_output_rate_hz`` or
faster (measured over the last ``RATE_WINDOW_S``), WARN below it (naming the cause: a slow camera or
inference slower than the camera), and ERROR once no output came for ``output_timeout_s``
(whatever the reason, which the status names too). A camera nobody subscribes to is idle: OK, not
judged (see :mod:`.demand`).
"""

from collections import deque
from dataclasses import dataclass
from typing import List, Optional, Tuple

__all__ = ["CPU_MIN_OUTPUT_RATE_HZ", "GPU_MIN_OUTPUT_RATE_HZ", "RATE_WINDOW_S", "HealthLimits", "EventWindow",
           "runs_on_gpu", "output_health"]

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels

#: min_output_rate_hz < 0 (auto) on a CPU: the embedded model at its 1024×512 network size served
#: 0.6-1.2 frames a second on this project's 2 shared CPU cores (scripts/bench_demand.py, README)
CPU_MIN_OUTPUT_RATE_HZ = 0.5
#: ... and on a GPU (TensorRT, or CUDA with ONNX Runtime / PyTorch), where one frame takes milliseconds
GPU_MIN_OUTPUT_RATE_HZ = 10.0
#: the output rate the level is judged on is averaged over this long (a 1 Hz stream is then not judged
#: on whether a frame happened to fall into the last second)
RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class HealthLimits:
    min_output_rate_hz: float = CPU_MIN_OUTPUT_RATE_HZ  # 0: no rate requirement
    output_timeout_s: float = 5.0

    @classmethod
    def for_device(cls, min_output_rate_hz: float, output_timeout_s: float, on_gpu: bool) -> "HealthLimits":
        """``min_output_rate_hz`` < 0: the default of the device inference runs on."""
        if min_output_rate_hz < 0:
            min_output_rate_hz = GPU_MIN_OUTPUT_RATE_HZ if on_gpu else CPU_MIN_OUTPUT_RATE_HZ
        return cls(min_output_rate_hz, output_timeout_s)


def runs_on_gpu(backend) -> bool:
    """Whether an inference backend (torch, onnxruntime, tensorrt) runs on a GPU."""
    if backend.name == "tensorrt":
        return True
    return bool(getattr(backend, "on_gpu", False)) or str(getattr(backend, "device", "cpu")).startswith("cuda")


class EventWindow:
    """Times of recent events (monotonic seconds); not thread-safe (CameraStats holds its lock)."""

    def __init__(self, window_s: float = RATE_WINDOW_S, max_events: int = 10_000):
        self.window_s = window_s
        self._times = deque(maxlen=max_events)

    def add(self, now: float) -> None:
        self._times.append(now)

    def count(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return len(self._times)

    def rate(self, now: float) -> float:
        return self.count(now) / self.window_s


def output_health(limits: HealthLimits, *, now: float, active_since: float, last_published: Optional[float],
                  input_rate: float, output_rate: float) -> List[Tuple[int, str]]:
    """(level, reason) pairs for a camera that is served (not idle). ``active_since``: when it became
    active (start, or the first subscriber after an idle spell); ``input_rate`` / ``output_rate``: over
    the last :data:`RATE_WINDOW_S`."""
    silent_since = active_since if last_published is None else max(last_published, active_since)
    silent = now - silent_since
    if silent >= limits.output_timeout_s:
        return [(ERROR, f"no output for {silent:.0f} s (output_timeout_s {limits.output_timeout_s:g})")]
    judged = limits.min_output_rate_hz > 0 and now - active_since >= RATE_WINDOW_S and input_rate > 0
    if not judged or output_rate >= limits.min_output_rate_hz:
        return []
    cause = (f"the camera sends {input_rate:.1f} Hz" if input_rate < limits.min_output_rate_hz
             else f"inference keeps up with {output_rate:.1f} of the camera's {input_rate:.1f} Hz")
    return [(WARN, f"output {output_rate:.2f} Hz is below min_output_rate_hz {limits.min_output_rate_hz:g}: "
                   f"{cause}")]
