"""A drive you can watch: what the model saw on every frame of a bag, labelled or not.

:class:`DriveRecorder` observes an :class:`~rpl_perception.eval.evaluation.Evaluation` (every mode
calls it once per predicted frame) and writes, streaming:

* ``overlay.mp4``: each frame with the heatmap in the node's RViz colouring (:func:`rpl_perception.visualize.overlay`,
  the colours of the score's fixed display range), the anomaly contour and the frame's stamp;
* ``frames.csv``: per frame its index, stamp, size, anomalous area (pixels above the score's threshold),
  max and mean score and, in live mode, the latency;

and at the end (:meth:`DriveRecorder.finish`) ``most_anomalous.png`` (a thumbnail sheet of the frames
with the largest anomalous area) and ``timeline.png`` (:mod:`.drive_plots`). Memory stays bounded: a
few numbers per frame and the thumbnails of the most anomalous frames.
"""

import csv
import heapq
import itertools
import math
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..visualize import colorize_scores, overlay
from .offline import score_settings

__all__ = ["DRIVE_FILES", "DriveRecorder", "drive_markdown", "letterbox"]

#: what a drive writes, in this order in the report
DRIVE_FILES = ("overlay.mp4", "most_anomalous.png", "timeline.png", "frames.csv")
CSV_COLUMNS = ("index", "stamp_ns", "width", "height", "labelled", "anomalous_fraction", "max_score", "mean_score",
               "latency_ms")
THUMBNAIL_SIDE = 320


def _placement(shape, size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(w, h, left, top) of an image of ``shape`` scaled to fit ``size`` (w, h), centred."""
    width, height = size
    factor = min(width / shape[1], height / shape[0])
    w, h = max(1, min(width, round(shape[1] * factor))), max(1, min(height, round(shape[0] * factor)))
    return w, h, (width - w) // 2, (height - h) // 2


def letterbox(picture: np.ndarray, size: Tuple[int, int], fill=0) -> np.ndarray:
    """``picture`` (H×W×3 or H×W) scaled to fit ``size`` (w, h), keeping its aspect ratio, centred on ``fill``."""
    w, h, left, top = _placement(picture.shape, size)
    shrink = w < picture.shape[1]
    scaled = cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    out = np.full((size[1], size[0]) + picture.shape[2:], fill, picture.dtype)
    out[top:top + h, left:left + w] = scaled
    return out


def _put_text(image: np.ndarray, lines: List[str]) -> None:
    """White text on a dark band across the top (legible on any heatmap colour)."""
    scale = max(0.4, image.shape[0] / 900)
    step = round(28 * scale)
    image[: step * len(lines) + step // 2] //= 3
    for row, text in enumerate(lines):
        cv2.putText(image, text, (8, step * (row + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)


def stamp_text(stamp_ns: Optional[int]) -> str:
    return "no stamp" if stamp_ns is None else f"stamp {stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}"


class DriveRecorder:
    """Streams the overlay video and per-frame CSV of a run into ``out_dir``; see the module.

    ``meta`` (the checkpoint's) gives each score's display range and threshold; without a recorded
    display range the first frame's 1st–99th percentile is kept for the whole video (a colour means the
    same score in every frame). ``video=False`` leaves the video out.
    """

    def __init__(self, out_dir, meta=None, fps: float = 10.0, video: bool = True, max_side: int = 960,
                 num_thumbnails: int = 8, alpha: float = 0.5):
        self.out_dir = Path(out_dir)
        self.meta, self.fps, self.video, self.max_side = meta, float(fps), video, max_side
        self.num_thumbnails, self.alpha = num_thumbnails, alpha
        self.score_name: Optional[str] = None
        self.display: Optional[Tuple[float, float]] = None
        self.threshold: Optional[float] = None
        self.rows: List[dict] = []
        self._size: Optional[Tuple[int, int]] = None
        self._writer = None
        self._csv_file = open(self.out_dir / "frames.csv", "w", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._csv_file, CSV_COLUMNS)
        self._csv.writeheader()
        self._best: List[tuple] = []  # min-heap of (rank, order, row, thumbnail)
        self._order = itertools.count()

    def _settle(self, score_name: str, score: np.ndarray) -> None:
        self.score_name = score_name
        display, self.threshold = score_settings(self.meta, score_name) if self.meta is not None else (None, None)
        if display is None:
            low, high = (float(v) for v in np.percentile(score, (1, 99)))
            display = (low, high if high > low else low + 1.0)
        self.display = display

    def add(self, frame, score_name: str, score: np.ndarray, labels=None, latency_s: Optional[float] = None) -> None:
        if self.score_name is None:
            self._settle(score_name, score)
        index = len(self.rows)
        above = None if self.threshold is None else float((score > self.threshold).mean())
        row = {"index": index, "stamp_ns": frame.stamp_ns, "width": score.shape[1], "height": score.shape[0],
               "labelled": int(frame.label is not None), "anomalous_fraction": above,
               "max_score": float(score.max()), "mean_score": float(score.mean()),
               "latency_ms": None if latency_s is None else 1e3 * latency_s}
        self.rows.append(row)
        self._csv.writerow({k: "" if v is None else (f"{v:.7g}" if isinstance(v, float) else v)
                            for k, v in row.items()})
        picture = self._overlay(frame.image, score)
        _put_text(picture, [f"#{index}  {stamp_text(frame.stamp_ns)}",
                            f"{score_name}: max {row['max_score']:.2f}"
                            + ("" if above is None else f", above threshold {100 * above:.1f} %")])
        if self.video:
            self._write_video(picture)
        self._keep_if_most_anomalous(row, picture)

    def _overlay(self, image: Optional[np.ndarray], score: np.ndarray) -> np.ndarray:
        base = image if image is not None else score
        if self._size is None:
            factor = min(1.0, self.max_side / max(base.shape[:2]))
            # even sides: what MPEG-4 encoders accept
            self._size = (2 * max(1, round(base.shape[1] * factor / 2)), 2 * max(1, round(base.shape[0] * factor / 2)))
        low, high = self.display
        if image is None:
            return letterbox(colorize_scores(score, low, high), self._size)
        # the score map may be smaller than the frame (live previews): both fill the same box
        fitted, scores = letterbox(image, self._size), letterbox(score.astype(np.float32), self._size, fill=low)
        threshold = math.inf if self.threshold is None else self.threshold
        return overlay(fitted, scores, low, high, threshold, alpha=self.alpha)

    def _write_video(self, picture: np.ndarray) -> None:
        if self._writer is None:
            path = self.out_dir / "overlay.mp4"
            # the encoder's default bit rate smears the stamp text from frame to frame; ~0.5 bit per pixel keeps it
            bitrate = max(2_000_000, round(0.5 * self._size[0] * self._size[1] * self.fps))
            self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size,
                                           [cv2.VIDEOWRITER_PROP_BITRATE, bitrate])
            if not self._writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write an MPEG-4 video to {path} (no mp4v encoder in this "
                                   "OpenCV build); run with --no-video")
        self._writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))

    def _keep_if_most_anomalous(self, row: dict, picture: np.ndarray) -> None:
        if self.num_thumbnails <= 0:
            return
        rank = (row["anomalous_fraction"] or 0.0, row["max_score"])
        if len(self._best) == self.num_thumbnails and rank <= self._best[0][0]:
            return
        thumbnail = letterbox(picture, (THUMBNAIL_SIDE, max(1, round(THUMBNAIL_SIDE * picture.shape[0]
                                                                           / picture.shape[1]))))
        heapq.heappush(self._best, (rank, next(self._order), row, thumbnail))
        if len(self._best) > self.num_thumbnails:
            heapq.heappop(self._best)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if not self._csv_file.closed:
            self._csv_file.close()

    def finish(self, skipped: Optional[dict] = None) -> dict:
        """Close the video and CSV, draw the sheet and timeline; the drive's part of the report summary."""
        from .drive_plots import plot_most_anomalous, plot_timeline

        self.close()
        best = [(row, thumb) for _, _, row, thumb in sorted(self._best, key=lambda e: e[:2], reverse=True)]
        files = ["frames.csv"]
        if self.rows:
            if self.video:
                files.insert(0, "overlay.mp4")
            plot_most_anomalous(best, self.out_dir / "most_anomalous.png", self.score_name, self.display,
                                self.threshold, self.rows[0]["stamp_ns"])
            plot_timeline(self.rows, self.out_dir / "timeline.png", self.score_name, self.threshold,
                          (skipped or {}).get("messages", []))
            files[-1:-1] = ["most_anomalous.png", "timeline.png"]
        return {"frames": len(self.rows), "score": self.score_name, "display_range": self.display,
                "threshold": self.threshold, "fps": self.fps, "files": files,
                "most_anomalous": [{"index": row["index"], "stamp_ns": row["stamp_ns"],
                                    "anomalous_fraction": row["anomalous_fraction"], "max_score": row["max_score"]}
                                   for row, _ in best]}


def drive_markdown(summary: dict) -> List[str]:
    """The report's sections on the drive (video, sheet, timeline, CSV) and on skipped messages."""
    out = []
    drive = summary.get("drive")
    if drive:
        threshold = drive["threshold"]
        out += ["", "## The drive", "",
                f"{drive['frames']} frames, score `{drive['score']}` coloured on "
                f"[{drive['display_range'][0]:.2f}, {drive['display_range'][1]:.2f}]" if drive["display_range"]
                else f"{drive['frames']} frames",
                "" if threshold is None else f"(contour and anomalous area: score > {threshold:.3f}).", ""]
        out += [f"- [{name}]({name})" for name in drive["files"]]
        if "most_anomalous.png" in drive["files"]:
            out += ["", "![most anomalous frames](most_anomalous.png)", "", "![timeline](timeline.png)"]
    skipped = summary.get("skipped")
    if skipped is not None:
        out += ["", "## Skipped messages", "", f"{skipped['count']} malformed message(s) skipped."]
        if skipped["messages"]:
            out += ["", "| topic | index | stamp | reason |", "|---|---:|---|---|"]
            out += [f"| {m['topic']} | {m['index']} | {stamp_text(m['stamp_ns'])} | {m['reason']} |"
                    for m in skipped["messages"]]
            if skipped["count"] > len(skipped["messages"]):
                out.append(f"\n(the first {len(skipped['messages'])} of {skipped['count']} are named)")
    return out
