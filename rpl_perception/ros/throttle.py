"""Log throttling per distinct problem (ROS-free).

A camera sending one kind of bad message 30 times a second logs it once per period; a second, different
problem is logged at once, not hidden behind the first. Problems differ by their text with the numbers
taken out ("data has 1000 bytes" and "data has 998 bytes" are one problem). A hostile stream of ever
new texts is bounded too: at most ``max_lines`` lines per period and ``max_kinds`` remembered texts.
"""

import re
from collections import OrderedDict
from typing import Optional

__all__ = ["ProblemThrottle"]

_NUMBERS = re.compile(r"\d+(\.\d+)?")


class ProblemThrottle:
    """Not thread-safe: one instance per camera, called from that camera's threads under its lock."""

    def __init__(self, period_s: float = 5.0, max_lines: int = 10, max_kinds: int = 64):
        self.period_s, self.max_lines, self.max_kinds = period_s, max_lines, max_kinds
        self._last: "OrderedDict[str, float]" = OrderedDict()  # kind → time of its last log line
        self._suppressed: "OrderedDict[str, int]" = OrderedDict()  # kind → lines held back since
        self._window_start = float("-inf")
        self._window_lines = 0

    @staticmethod
    def kind(text: str) -> str:
        return _NUMBERS.sub("#", text)

    def admit(self, text: str, now: float) -> Optional[int]:
        """None: hold this line back; else log it, noting the returned number of lines of the same
        kind held back since its last one."""
        kind = self.kind(text)
        if now - self._window_start >= self.period_s:
            self._window_start, self._window_lines = now, 0
        last = self._last.get(kind)
        if (last is not None and now - last < self.period_s) or self._window_lines >= self.max_lines:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            self._suppressed.move_to_end(kind)
            self._trim(self._suppressed)
            return None
        self._last[kind] = now
        self._last.move_to_end(kind)
        self._trim(self._last)
        self._window_lines += 1
        return self._suppressed.pop(kind, 0)

    def _trim(self, table: OrderedDict) -> None:
        while len(table) > self.max_kinds:
            table.popitem(last=False)
