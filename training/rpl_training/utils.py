"""Bookkeeping of a training run: the metrics log, Ctrl-C handling, the code's git commit."""

import csv
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["MetricsLog", "StopRequest", "git_commit", "read_log", "TRAIN_FIELDS", "VALIDATION_FIELDS"]

log = logging.getLogger("rpl_training")

TRAIN_FIELDS = ("iteration", "epoch", "lr", "loss", "ce", "reg", "energy", "corocl", "corocl_fraction",
                "on_road_fraction", "skipped_reads", "seconds_per_iteration")
#: validation.csv: the mean over the validation sets, then AP / FPR95 per set (``<set>_ap`` …)
VALIDATION_FIELDS = ("iteration", "ap", "fpr95", "auroc", "best_ap")


def read_log(path: Path) -> List[Dict[str, float]]:
    """The rows of a run's ``metrics.csv`` / ``validation.csv`` as {column: value}, empty cells left out
    (a column added by newer code); [] where the file does not exist yet."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(fh)]


def git_commit() -> Optional[str]:
    """HEAD of the repository holding this file, with ``+dirty`` for uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class MetricsLog:
    """CSV files (always) and TensorBoard events (when the ``tensorboard`` package imports)."""

    def __init__(self, out_dir: Path, start_iteration: int, validation_fields=VALIDATION_FIELDS):
        self.files = {"train": (out_dir / "metrics.csv", TRAIN_FIELDS),
                      "validation": (out_dir / "validation.csv", tuple(validation_fields))}
        for path, fields in self.files.values():
            self._start_csv(path, fields, start_iteration)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_iteration or None)
        except ImportError:
            self.writer = None
            log.info("tensorboard is not installed: metrics go to CSV only (pip install tensorboard for event files)")

    @staticmethod
    def _start_csv(path: Path, fields, start_iteration: int) -> None:
        """Fresh file with a header; on resume keep only the rows up to the resumed iteration."""
        rows = []
        if start_iteration and path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= start_iteration]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, kind: str, values: Dict[str, float]) -> None:
        path, fields = self.files[kind]
        with path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields).writerow({k: values.get(k, "") for k in fields})
        if self.writer is not None:
            for key, value in values.items():
                if key not in ("iteration", "epoch") and value is not None:
                    self.writer.add_scalar(f"{kind}/{key}", value, values["iteration"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM set a flag the loop checks at iteration boundaries; a second
    signal aborts at once. Handlers are installed only in the main thread and restored on exit.
    ``deadline`` (a ``time.monotonic()`` value) also requests the stop once passed (a time budget)."""

    def __init__(self, deadline: Optional[float] = None):
        self._signalled = False
        self.deadline = deadline
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self._signalled or (self.deadline is not None and time.monotonic() >= self.deadline)

    def _handle(self, signum, _frame):
        if self._signalled:
            raise KeyboardInterrupt
        self._signalled = True
        log.warning("%s received: stopping after this iteration and saving (send it again to abort)",
                    signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
