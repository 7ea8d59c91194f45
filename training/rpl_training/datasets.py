"""Training data sources in their released layouts: inlier scenes and outlier objects.

Inlier sources give ``(rgb, label)``: H×W×3 RGB uint8 and H×W uint8 labels (any value other
than 254 / 255 is inlier; the RPL losses never read the class):

* :class:`CityscapesInliers` — ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with
  ``gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png`` (or ``*_labelIds.png`` converted with the
  official table), read through :func:`rpl_perception.eval.datasets.open_dataset`;
* :class:`FrameInliers` — any folder of driving images and/or videos (or one video file); every
  pixel is inlier (label 0). This is legitimate because the in-distribution loss only uses the
  frozen closed-set network's pseudo-labels;
* :class:`IDDInliers` — the India Driving Dataset (IDD / IDD-Lite) layout
  ``leftImg8bit/SPLIT/SEQ/NAME_image.jpg`` + ``gtFine/SPLIT/SEQ/NAME_label.png``, with its labels
  (so that a class such as IDD's "living things" can be voided out of the in-distribution loss).

Every inlier source takes ``void_labels``: label values that become 255 (void), so that they enter
no loss term (see :class:`VoidLabels`).

Outlier sources give ``(rgb, mask)``: mask 254 = object, 0 = background, 255 = void:

* :class:`CocoOutliers` — COCO ``annotations/instances_SPLIT.json`` + ``SPLIT/*.jpg`` through
  pycocotools, filtered as the official RPL / Meta-OoD preparation script (see the class);
* :class:`CutoutOutliers` — a folder of object cut-outs (RGBA PNGs, or ``images/`` + ``masks/``).

Missing folders or annotation files raise one :class:`DatasetLayoutError` that lists everything
missing and the expected layout. Unreadable or truncated image files raise :class:`UnreadableImage`
when read; the training dataset skips them (see :mod:`rpl_training.sample_stream`).
"""

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from rpl_perception.eval.datasets import DatasetLayoutError, open_dataset, read_label
from rpl_perception.image import IMAGE_SUFFIXES, UnreadableImage, decode_image, read_image
from rpl_perception.labels import BACKGROUND, VOID
from rpl_perception.labels import OUTLIER as OBJECT

__all__ = [
    "DatasetLayoutError", "UnreadableImage", "read_image", "decode_image", "CityscapesInliers",
    "FrameInliers", "IDDInliers", "VoidLabels", "CocoOutliers", "CutoutOutliers", "EXCLUDED_COCO_CLASSES", "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES", "OBJECT", "BACKGROUND", "VOID",
]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")

#: COCO classes that are Cityscapes classes (or parts of driving scenes): an outlier image holding
#: any of them is dropped (official RPL / Meta-OoD filter)
EXCLUDED_COCO_CLASSES = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light",
                         "stop sign")


def _layout_error(title: str, root: Path, problems: Sequence[str], layout: Sequence[str]) -> DatasetLayoutError:
    return DatasetLayoutError(f"{title} at {root}: " + "; ".join(problems) + "\nexpected layout:\n"
                              + "\n".join(f"  {root}/{line}" for line in layout))


# ----------------------------------------------------------------------------- inliers

class CityscapesInliers:
    """Cityscapes ``split`` images with train-id labels (0–18, 255 void)."""

    def __init__(self, root, split: str = "train"):
        self.root = Path(root)
        self.dataset = open_dataset("cityscapes", self.root, split=split)

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str:
        return str(self.dataset.files[index].image)

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        files = self.dataset.files[index]
        image = read_image(files.image)
        try:
            label = read_label(files.label, self.dataset.label_map)
        except OSError as exc:
            raise UnreadableImage(str(exc)) from None
        if label.shape != image.shape[:2]:
            raise UnreadableImage(f"{files.label}: label {label.shape} does not match image {image.shape[:2]}")
        return image, label


class FrameInliers:
    """Unlabelled driving frames: image files and/or every ``video_stride``-th frame of videos.

    ``root`` is a folder (searched recursively, sorted) or one video file. Video frames are
    decoded once, sequentially, and kept JPEG-encoded in memory (about 0.1–0.3 MB per 720p
    frame); for hours of video, extract frames to files or raise the stride. Labels are all 0.
    """

    LAYOUT = ("**/NAME.(png|jpg|…)   driving images, any sub-folders",
              "**/NAME.(mp4|avi|mov|mkv|webm)   videos, every video_stride-th frame is used")

    def __init__(self, root, video_stride: int = 1, jpeg_quality: int = 95, include: Optional[Sequence[str]] = None):
        """``include``: glob patterns relative to ``root`` that select the files (default: all,
        recursively), e.g. ``["train/*", "val/*"]`` to leave a dataset's label folders out."""
        self.root = Path(root)
        if int(video_stride) != video_stride or video_stride < 1:
            raise ValueError(f"video_stride must be a positive integer; got {video_stride!r}")
        if self.root.is_file() and self.root.suffix.lower() in VIDEO_SUFFIXES:
            images, videos = [], [self.root]
        elif self.root.is_dir():
            found = {p for pattern in (include or ["**/*"]) for p in self.root.glob(pattern)}
            files = sorted(p for p in found if p.is_file())
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        else:
            raise _layout_error("inlier frames", self.root, ["no such folder or video file"], self.LAYOUT)
        if not images and not videos:
            raise _layout_error("inlier frames", self.root, ["no image or video files found"], self.LAYOUT)
        #: (name, path or None, encoded frame or None)
        self.items: List[Tuple[str, Optional[Path], Optional[bytes]]] = [(str(p), p, None) for p in images]
        for video in videos:
            self.items.extend(self._decode_video(video, int(video_stride), jpeg_quality))
        if not self.items:
            raise _layout_error("inlier frames", self.root, ["no readable frames in the videos found"], self.LAYOUT)

    @staticmethod
    def _decode_video(path: Path, stride: int, quality: int):
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            log.warning("skipping video %s: OpenCV cannot open it", path)
            return []
        frames, index = [], 0
        try:
            while True:
                ok = capture.grab()
                if not ok:
                    break
                if index % stride == 0:
                    ok, bgr = capture.retrieve()
                    if ok:
                        encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
                        frames.append((f"{path}#frame{index}", None, encoded.tobytes()))
                index += 1
        finally:
            capture.release()
        if not frames:
            log.warning("skipping video %s: no frame could be decoded", path)
        return frames

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        return self.items[index][0]

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        name, path, data = self.items[index]
        image = read_image(path) if data is None else decode_image(data, name)
        return image, np.zeros(image.shape[:2], np.uint8)


class IDDInliers:
    """India Driving Dataset frames with their labels: ``leftImg8bit/SPLIT/SEQ/NAME_image.jpg`` +
    ``gtFine/SPLIT/SEQ/NAME_label.png`` (IDD-Lite level-1 ids 0–6, 255 unlabelled), for each of
    ``splits``; only frames with a label file are used (IDD releases none for its test split)."""

    LAYOUT = ("leftImg8bit/SPLIT/SEQ/NAME_image.jpg", "gtFine/SPLIT/SEQ/NAME_label.png")

    def __init__(self, root, splits: Sequence[str] = ("train", "val")):
        self.root = Path(root)
        splits = [splits] if isinstance(splits, str) else list(splits)
        problems = [f"missing folder {d}/{split}/" for split in splits for d in ("leftImg8bit", "gtFine")
                    if not (self.root / d / split).is_dir()]
        if problems:
            raise _layout_error("IDD", self.root, problems, [line.replace("SPLIT", "|".join(splits))
                                                             for line in self.LAYOUT])
        self.pairs: List[Tuple[Path, Path]] = []
        for split in splits:
            for image in sorted((self.root / "leftImg8bit" / split).glob("*/*_image.jpg")):
                label = self.root / "gtFine" / split / image.parent.name / image.name.replace("_image.jpg", "_label.png")
                if label.is_file():
                    self.pairs.append((image, label))
        if not self.pairs:
            raise _layout_error("IDD", self.root, ["no image with a label file found"], self.LAYOUT)

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        return str(self.pairs[index][0])

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        try:
            label = read_label(label_path)
        except (OSError, ValueError) as exc:
            raise UnreadableImage(str(exc)) from None
        if label.shape != image.shape[:2]:
            raise UnreadableImage(f"{label_path}: label {label.shape} does not match image {image.shape[:2]}")
        return image, label


class VoidLabels:
    """An inlier source whose label values ``void_labels`` become 255 (void: in no loss term).

    For IDD's "living things" (people and animals in one class): animals on a road are anomalies
    to a Cityscapes segmenter, so those pixels must not be taught as normal."""

    def __init__(self, source, void_labels: Sequence[int]):
        self.source = source
        self.root = getattr(source, "root", None)  # where the road masks name its frames from
        self.table = np.arange(256, dtype=np.uint8)
        self.table[list(void_labels)] = VOID

    def __len__(self) -> int:
        return len(self.source)

    def describe(self, index: int) -> str:
        return self.source.describe(index)

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image, label = self.source.read(index)
        return image, self.table[label]


# ----------------------------------------------------------------------------- outliers

class CocoOutliers:
    """COCO images as outlier objects, filtered as the official RPL preparation script.

    ``filter="image"`` (official): drop every image that holds any instance (crowd included) of
    ``excluded`` classes; the object mask is the union of all its instance masks (crowd included)
    = 254, background 0. Images without any annotation stay, as in the official script (their
    mask is all background: they paste nothing). ``filter="object"``: keep every image with at
    least one instance of an allowed class; allowed instances = 254, excluded ones = 255 (void:
    neither pasted nor used as context background), background 0. In both modes images with a
    side below ``min_size`` are dropped. ``max_images`` keeps a random subset (seeded by
    ``seed``); the official code keeps as many as there are Cityscapes training images.
    """

    LAYOUT = ("annotations/instances_SPLIT.json   (COCO instances format)", "SPLIT/NAME.jpg")

    def __init__(self, root, split: str = "train2017", filter: str = "image", min_size: int = 480,
                 excluded: Sequence[str] = EXCLUDED_COCO_CLASSES, max_images: Optional[int] = None,
                 seed: int = 0):
        from pycocotools.coco import COCO

        if filter not in ("image", "object"):
            raise ValueError(f"COCO filter must be 'image' or 'object'; got {filter!r}")
        self.root = Path(root)
        annotation_file = self.root / "annotations" / f"instances_{split}.json"
        self.image_dir = self.root / split
        problems = [] if self.root.is_dir() else [f"the folder {self.root} does not exist"]
        if not problems:
            if not annotation_file.is_file():
                problems.append(f"missing annotation file annotations/{annotation_file.name}")
            if not self.image_dir.is_dir():
                problems.append(f"missing image folder {split}/")
        if problems:
            raise _layout_error("COCO", self.root, problems,
                                [line.replace("SPLIT", split) for line in self.LAYOUT])
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO(str(annotation_file))
        names = {c["name"]: c["id"] for c in self.coco.loadCats(self.coco.getCatIds())}
        unknown = sorted(set(excluded) - set(names))
        if unknown:
            raise ValueError(f"excluded COCO classes {unknown} are not categories of {annotation_file}")
        self.excluded_ids = {names[n] for n in excluded}
        self.filter = filter
        self.image_ids = self._select(min_size)
        if max_images is not None and len(self.image_ids) > max_images:
            keep = np.random.default_rng(seed).permutation(len(self.image_ids))[:max_images]
            self.image_ids = [self.image_ids[i] for i in sorted(keep)]
        if not self.image_ids:
            raise ValueError(f"no COCO image in {annotation_file} passes the {filter}-level filter "
                             f"(min side {min_size} px, excluded {list(excluded)})")

    def _select(self, min_size: int) -> List[int]:
        keep = []
        for image_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[image_id]
            if min(info["height"], info["width"]) < min_size:
                continue
            categories = [a["category_id"] for a in self.coco.imgToAnns.get(image_id, [])]
            allowed = [c for c in categories if c not in self.excluded_ids]
            if self.filter == "image" and len(allowed) == len(categories):
                keep.append(image_id)
            elif self.filter == "object" and allowed:
                keep.append(image_id)
        return keep

    def __len__(self) -> int:
        return len(self.image_ids)

    def describe(self, index: int) -> str:
        return str(self.image_dir / self.coco.imgs[self.image_ids[index]]["file_name"])

    def mask(self, index: int) -> np.ndarray:
        """The object mask of image ``index``: 254 objects, 0 background (255 excluded objects)."""
        info = self.coco.imgs[self.image_ids[index]]
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        void = np.zeros_like(mask, dtype=bool)
        with warnings.catch_warnings():  # pycocotools' NumPy-2 copy-keyword DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            for ann in self.coco.imgToAnns.get(info["id"], []):
                pixels = self.coco.annToMask(ann).astype(bool)  # polygons, RLE and crowd RLE
                if ann["category_id"] in self.excluded_ids:
                    void |= pixels
                else:
                    mask[pixels] = OBJECT
        mask[void] = VOID  # an excluded object in front of an allowed one must never be pasted
        return mask

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        path = self.describe(index)
        image = read_image(path)
        mask = self.mask(index)
        if image.shape[:2] != mask.shape:
            raise UnreadableImage(f"{path}: image is {image.shape[1]}×{image.shape[0]} but its annotation "
                                  f"says {mask.shape[1]}×{mask.shape[0]}")
        return image, mask


class CutoutOutliers:
    """A folder of object cut-outs: RGBA PNGs (alpha ≥ 128 = object), or ``images/NAME.*`` with
    ``masks/NAME.png`` (non-zero = object). Everything else is background."""

    LAYOUT = ("NAME.png   RGBA cut-outs (alpha = object)",
              "or images/NAME.(png|jpg) + masks/NAME.png   (non-zero = object)")

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise _layout_error("object cut-outs", self.root, [f"the folder {self.root} does not exist"], self.LAYOUT)
        self.pairs: List[Tuple[Path, Optional[Path]]] = []
        if (self.root / "images").is_dir() or (self.root / "masks").is_dir():
            problems = [f"missing folder {d}/" for d in ("images", "masks") if not (self.root / d).is_dir()]
            if problems:
                raise _layout_error("object cut-outs", self.root, problems, self.LAYOUT)
            masks: Dict[str, Path] = {p.stem: p for p in (self.root / "masks").iterdir() if p.suffix.lower() == ".png"}
            images = sorted(p for p in (self.root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            missing = [f"no mask masks/{p.stem}.png for images/{p.name}" for p in images if p.stem not in masks]
            if missing:
                raise _layout_error("object cut-outs", self.root, missing[:10], self.LAYOUT)
            self.pairs = [(p, masks[p.stem]) for p in images]
        else:
            self.pairs = [(p, None) for p in sorted(self.root.glob("*.png"))]
        if not self.pairs:
            raise _layout_error("object cut-outs", self.root, ["no cut-outs found"], self.LAYOUT)

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        return str(self.pairs[index][0])

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        if mask_path is None:
            rgba = read_image(image_path, cv2.IMREAD_UNCHANGED)
            if rgba.shape[2] != 4:
                raise UnreadableImage(f"{image_path}: cut-out PNG has no alpha channel")
            return np.ascontiguousarray(rgba[..., :3]), np.where(rgba[..., 3] >= 128, OBJECT, BACKGROUND).astype(np.uint8)
        image = read_image(image_path)
        mask = read_image(mask_path)[..., 0]
        if mask.shape != image.shape[:2]:
            raise UnreadableImage(f"{mask_path}: mask {mask.shape} does not match image {image.shape[:2]}")
        return image, np.where(mask > 0, OBJECT, BACKGROUND).astype(np.uint8)
