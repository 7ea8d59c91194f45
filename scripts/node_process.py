"""What the node benchmarks share: waiting for a started ``anomaly_node`` to be ready.

Imported by the scripts in this folder (``python scripts/bench_*.py`` puts it on ``sys.path``).
"""

import sys
import time
from typing import Callable

__all__ = ["wait_for_node"]


def wait_for_node(node, ready: Callable[[], bool], log, timeout_s: float = 180.0, poll_s: float = 0.2) -> None:
    """Return once ``ready()``; exit with the tail of the node's ``log`` (a file it writes to) when the
    node process ends or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if node.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            sys.exit(f"the node did not start:\n{log.read()[-3000:]}")
        time.sleep(poll_s)
