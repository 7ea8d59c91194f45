"""The drive's figures (matplotlib, Agg backend): a thumbnail sheet of the most anomalous frames and a
per-frame timeline of anomalous area, max score and (live mode) latency, skipped messages marked."""

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["plot_most_anomalous", "plot_timeline"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _caption(row: dict, start_ns: Optional[int]) -> str:
    when = "" if row["stamp_ns"] is None or start_ns is None else f"  t+{(row['stamp_ns'] - start_ns) / 1e9:.1f} s"
    area = "" if row["anomalous_fraction"] is None else f"  area {100 * row['anomalous_fraction']:.1f} %"
    return f"#{row['index']}{when}{area}  max {row['max_score']:.2f}"


def plot_most_anomalous(best: Sequence[Tuple[dict, np.ndarray]], path: Path, score: str,
                        display: Tuple[float, float], threshold: Optional[float], start_ns: Optional[int] = None,
                        columns: int = 4) -> None:
    """Thumbnails (overlays) of the frames with the largest anomalous area, most anomalous first; times
    in the captions count from ``start_ns`` (the drive's first stamp)."""
    plt = _pyplot()
    columns = max(1, min(columns, len(best)))
    rows = math.ceil(len(best) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.4 * rows + 0.5), squeeze=False)
    for ax, (row, thumbnail) in zip(axes.flat, best):
        ax.imshow(thumbnail)
        ax.set_title(_caption(row, start_ns), fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    rule = "" if threshold is None else f", area above {threshold:.2f}"
    fig.suptitle(f"Most anomalous frames ({score} on [{display[0]:.2f}, {display[1]:.2f}]{rule})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_timeline(rows: List[dict], path: Path, score: str, threshold: Optional[float],
                  skipped: Sequence[dict] = ()) -> None:
    """Per frame over time (stamp seconds from the first frame, or the frame index without stamps)."""
    plt = _pyplot()
    stamped = all(row["stamp_ns"] is not None for row in rows)
    start = min(row["stamp_ns"] for row in rows) if stamped else 0
    x = np.array([(row["stamp_ns"] - start) / 1e9 if stamped else row["index"] for row in rows])
    panels = [("max_score", f"max {score}")]
    if threshold is not None:
        panels.insert(0, ("anomalous_fraction", "anomalous area (%)"))
    if any(row["latency_ms"] is not None for row in rows):
        panels.append(("latency_ms", "latency (ms)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels) + 0.6), sharex=True, squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], panels):
        values = np.array([np.nan if row[key] is None else row[key] for row in rows], float)
        if key == "anomalous_fraction":
            values = 100 * values
        ax.plot(x, values, marker=".", markersize=3, linewidth=1)
        if key == "max_score" and threshold is not None:
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8, label=f"threshold {threshold:.2f}")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
        for n, message in enumerate(skipped if stamped else ()):
            ax.axvline((message["stamp_ns"] - start) / 1e9, color="tab:red", linewidth=0.8, alpha=0.7,
                       label="skipped message" if n == 0 and key == panels[0][0] else None)
        if skipped and stamped and key == panels[0][0]:
            ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the first frame" if stamped else "frame")
    fig.suptitle(f"Per-frame timeline ({len(rows)} frames)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
