"""Readers for the evaluation datasets in the folder layouts they are released in.

Every reader gives a :class:`LabelledImageDataset`: a sequence of :class:`Sample`
``(name, image, label)`` read lazily on access, the image as H×W×3 RGB uint8 (OpenCV), the label as
H×W uint8. Anomaly sets use 0 = in-distribution, 1 = anomaly, 255 = void; Cityscapes uses the
19 train ids with 255 = void. Open one with :func:`open_dataset` (``kind="auto"`` detects the
layout); a missing folder or file raises one :class:`DatasetLayoutError` that lists everything
missing and shows the expected layout.

Label conversions (raw value → label; values not listed become 255 = void):

* Fishyscapes Lost & Found / Static, SMIYC AnomalyTrack / ObstacleTrack: 0 → 0, 1 → 1 (released
  as 0 / 1 / 255).
* RoadAnomaly: 0 → 0, 2 → 1 (``labels_semantic.png``; 0 normal, 2 anomaly).
* Lost & Found ``gtCoarse_labelIds``: 1 (free space) → 0, 2…200 (objects) → 1, 0 (unlabelled
  / background) → void; as SMIYC's ``DatasetLostAndFound`` (``usual=1, anomaly=[2, 200],
  ignore=0``). Note: the PEBAL/RPL preprocessing (``gtCoarse_labelTrainIds``) instead voids the
  "random non-hazard" objects (ids 31, 33, 34, 36–39); this reader follows the benchmark.
* Cityscapes ``gtFine_labelTrainIds`` as released by cityscapesScripts, or ``gtFine_labelIds``
  converted with the official id → trainId table (:data:`CITYSCAPES_ID_TO_TRAIN_ID`).
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..image import IMAGE_SUFFIXES, read_rgb
from ..labels import VOID

__all__ = [
    "Sample", "SampleFiles", "LabelledImageDataset", "DatasetLayoutError", "DatasetKind", "DATASET_KINDS",
    "open_dataset", "detect_kind", "read_rgb", "read_label", "CITYSCAPES_ID_TO_TRAIN_ID",
]

ANOMALY_LABELS_01 = {0: 0, 1: 1}
ROAD_ANOMALY_LABELS = {0: 0, 2: 1}
LOST_AND_FOUND_LABELS = {1: 0, **{label_id: 1 for label_id in range(2, 201)}}

#: Cityscapes labelIds → trainIds (cityscapesScripts ``helpers/labels.py``); other ids → 255
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder does not have the expected layout; the message lists what is missing."""


class Sample(NamedTuple):
    name: str
    image: np.ndarray  # H×W×3 RGB uint8
    label: np.ndarray  # H×W uint8


@dataclass(frozen=True)
class SampleFiles:
    name: str
    image: Path
    label: Path


# ----------------------------------------------------------------------------- file reading

def _lookup_table(mapping: Mapping[int, int], size: int) -> np.ndarray:
    table = np.full(size, VOID, dtype=np.uint8)
    for raw, label in mapping.items():
        if 0 <= raw < size:
            table[raw] = label
    return table


def read_label(path, label_map: Optional[Mapping[int, int]] = None) -> np.ndarray:
    """A single-channel label PNG as H×W uint8, raw values mapped by ``label_map`` (unlisted → 255).

    Without ``label_map`` the file must already be uint8 and is returned as stored.
    """
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise OSError(f"cannot read label {path} (missing, unreadable or not an image)")
    if raw.ndim != 2:
        raise ValueError(f"label {path} decodes to shape {raw.shape}; expected a single-channel map of "
                         "class ids (a colour or palette PNG is not a label map)")
    if raw.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"label {path} has dtype {raw.dtype}; expected uint8 or uint16 class ids")
    if label_map is None:
        if raw.dtype != np.uint8:
            raise ValueError(f"label {path} is {raw.dtype}; give a label_map to convert it to uint8")
        return raw
    return _lookup_table(label_map, 1 << (8 * raw.itemsize))[raw]


class LabelledImageDataset(Sequence):
    """Image / label file pairs, read on access: ``dataset[i]`` → :class:`Sample`.

    ``files[i]`` holds the paths (:class:`SampleFiles`); :meth:`read_label` reads only a label.
    """

    def __init__(self, kind: str, root: Path, files: Sequence[SampleFiles],
                 label_map: Optional[Mapping[int, int]]):
        self.kind, self.root, self.files, self.label_map = kind, Path(root), tuple(files), label_map

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer; got {type(index).__name__}")
        files = self.files[index]  # IndexError ends iteration
        return Sample(files.name, read_rgb(files.image), self.read_label(index))

    def read_label(self, index: int) -> np.ndarray:
        """Only the label of sample ``index`` (skips decoding the image)."""
        return read_label(self.files[index].label, self.label_map)

    @property
    def names(self) -> List[str]:
        return [files.name for files in self.files]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, root={str(self.root)!r}, samples={len(self)})"


# ----------------------------------------------------------------------------- layouts

def _layout_error(kind: str, root: Path, problems: Sequence[str]) -> DatasetLayoutError:
    info = DATASET_KINDS[kind]
    shown = list(problems[:10]) + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
    return DatasetLayoutError(
        f"{info.title} dataset at {root}: " + "; ".join(shown) + "\nexpected layout:\n"
        + "\n".join(f"  {root}/{line}" for line in info.layout))


def _require_dirs(kind: str, root: Path, *dirs: str) -> None:
    missing = [f"missing folder {d}/" for d in dirs if not (root / d).is_dir()]
    if not root.is_dir():
        missing = [f"the folder {root} does not exist"]
    if missing:
        raise _layout_error(kind, root, missing)


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _pair_or_raise(kind: str, root: Path, candidates: Sequence[Tuple[str, Path, Path]],
                   missing_what: str = "label") -> List[SampleFiles]:
    """Turn (name, image, label) candidates into SampleFiles; one error if any file is missing."""
    if not candidates:
        raise _layout_error(kind, root, ["found no samples"])
    problems = []
    for name, image, label in candidates:
        needed = label if missing_what == "label" else image
        if not needed.is_file():
            problems.append(f"no {missing_what} {needed.relative_to(root)} for {name}")
    if problems:
        raise _layout_error(kind, root, problems)
    return [SampleFiles(name, image, label) for name, image, label in candidates]


def _rpl_layout(kind: str, root: Path) -> LabelledImageDataset:
    """The official RPL code's validation layout, shared by every anomaly set it reads:
    ``images/NAME.(png|jpg|webp)`` + ``labels_masks/NAME.png`` (0 in, 1 anomaly, 255 void).

    SMIYC's own release names its labels ``NAME_labels_semantic.png`` (beside colour previews);
    where such files exist only they are read. Pairs are made from the label side (only validation
    frames have released labels)."""
    _require_dirs(kind, root, "images", "labels_masks")
    images = {p.stem: p for p in _images_in(root / "images")}
    suffix = "_labels_semantic.png"
    labels = sorted((root / "labels_masks").glob("*.png"), key=lambda p: _natural_key(p.name))
    if any(label.name.endswith(suffix) for label in labels):
        labels = [label for label in labels if label.name.endswith(suffix)]
    candidates = []
    for label in labels:
        name = label.name[:-len(suffix)] if label.name.endswith(suffix) else label.stem
        candidates.append((name, images.get(name, root / "images" / f"{name}.(jpg|webp|png)"), label))
    return LabelledImageDataset(kind, root, _pair_or_raise(kind, root, candidates, "image"), ANOMALY_LABELS_01)


def _natural_key(name: str):
    """'2.png' before '10.png': the RPL layout numbers its files."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _fishyscapes(kind: str, subfolder: str) -> Callable[[Path], LabelledImageDataset]:
    def read(root: Path) -> LabelledImageDataset:
        if (root / "labels_masks").is_dir():
            return _rpl_layout(kind, root)
        if not (root / "original").is_dir() and (root / subfolder / "original").is_dir():
            root = root / subfolder  # the parent fishyscapes/ folder of LostAndFound/ and Static/
        _require_dirs(kind, root, "original", "labels")
        candidates = [(p.stem, p, root / "labels" / f"{p.stem}.png") for p in _images_in(root / "original")]
        return LabelledImageDataset(kind, root, _pair_or_raise(kind, root, candidates), ANOMALY_LABELS_01)
    return read


def _smiyc(kind: str) -> Callable[[Path], LabelledImageDataset]:
    def read(root: Path) -> LabelledImageDataset:
        return _rpl_layout(kind, root)
    return read


def _road_anomaly(root: Path) -> LabelledImageDataset:
    kind = "road_anomaly"
    if (root / "frames").is_dir():  # as released: frames/X.jpg, frames/X.labels/labels_semantic.png
        candidates = [(p.stem, p, root / "frames" / f"{p.stem}.labels" / "labels_semantic.png")
                      for p in _images_in(root / "frames")]
    else:  # flat copy: images/X.jpg, labels/X.png
        if not ((root / "images").is_dir() and (root / "labels").is_dir()):
            raise _layout_error(kind, root, ["missing folder frames/ (or images/ and labels/)"]
                                if root.is_dir() else [f"the folder {root} does not exist"])
        candidates = [(p.stem, p, root / "labels" / f"{p.stem}.png") for p in _images_in(root / "images")]
    return LabelledImageDataset(kind, root, _pair_or_raise(kind, root, candidates), ROAD_ANOMALY_LABELS)


def _cityscapes_style_candidates(root: Path, split: str, label_dir: str, label_suffix: str):
    """(name, image, label) for leftImg8bit/SPLIT/GROUP/NAME_leftImg8bit.png → LABEL_DIR/SPLIT/GROUP/NAME_SUFFIX."""
    candidates = []
    for image in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
        name = image.name[:-len("_leftImg8bit.png")]
        candidates.append((name, image, root / label_dir / split / image.parent.name / f"{name}{label_suffix}"))
    return candidates


def _lost_and_found(root: Path, split: str = "test") -> LabelledImageDataset:
    kind = "lost_and_found"
    _require_dirs(kind, root, f"leftImg8bit/{split}", f"gtCoarse/{split}")
    candidates = _cityscapes_style_candidates(root, split, "gtCoarse", "_gtCoarse_labelIds.png")
    return LabelledImageDataset(kind, root, _pair_or_raise(kind, root, candidates), LOST_AND_FOUND_LABELS)


def _cityscapes(root: Path, split: str = "val") -> LabelledImageDataset:
    kind = "cityscapes"
    _require_dirs(kind, root, f"leftImg8bit/{split}", f"gtFine/{split}")
    train_ids = _cityscapes_style_candidates(root, split, "gtFine", "_gtFine_labelTrainIds.png")
    if train_ids and all(label.is_file() for _, _, label in train_ids):
        return LabelledImageDataset(kind, root, _pair_or_raise(kind, root, train_ids), None)
    label_ids = _cityscapes_style_candidates(root, split, "gtFine", "_gtFine_labelIds.png")
    return LabelledImageDataset(kind, root, _pair_or_raise(kind, root, label_ids), CITYSCAPES_ID_TO_TRAIN_ID)


def _folders(root: Path, image_dir: str = "images", label_dir: str = "labels",
             label_map: Optional[Mapping[int, int]] = None) -> LabelledImageDataset:
    """Plain folder pairs matched by file stem; labels used as stored unless ``label_map`` is given."""
    kind = "folders"
    _require_dirs(kind, root, image_dir, label_dir)
    labels = {p.stem: p for p in _images_in(root / label_dir)}
    candidates = [(p.stem, p, labels.get(p.stem, root / label_dir / f"{p.stem}.png"))
                  for p in _images_in(root / image_dir)]
    return LabelledImageDataset(kind, root, _pair_or_raise(kind, root, candidates), label_map)


@dataclass(frozen=True)
class DatasetKind:
    title: str
    layout: Tuple[str, ...]
    read: Callable[..., LabelledImageDataset]
    #: keyword options ``read`` accepts (through :func:`open_dataset`)
    options: Tuple[str, ...] = ()
    #: (min_pred_size, min_gt_size) for :func:`~rpl_perception.eval.metrics.component_metrics`:
    #: SMIYC ObstacleTrack's 50 / 10 for road-obstacle sets, AnomalyTrack's 500 / 100 for the other
    #: anomaly sets, None for closed-set segmentation
    component_sizes: Optional[Tuple[int, int]] = (500, 100)


DATASET_KINDS: Dict[str, DatasetKind] = {
    "fishyscapes_lost_and_found": DatasetKind(
        "Fishyscapes Lost & Found", ("original/NAME.png", "labels/NAME.png   (0 in, 1 anomaly, 255 void)",
                                     "or RPL layout: images/NAME.png + labels_masks/NAME.png"),
        _fishyscapes("fishyscapes_lost_and_found", "LostAndFound")),
    "fishyscapes_static": DatasetKind(
        "Fishyscapes Static", ("original/NAME.png", "labels/NAME.png   (0 in, 1 anomaly, 255 void)",
                               "or RPL layout: images/NAME.jpg + labels_masks/NAME.png"),
        _fishyscapes("fishyscapes_static", "Static")),
    "smiyc_anomaly_track": DatasetKind(
        "SMIYC AnomalyTrack",
        ("images/NAME.jpg", "labels_masks/NAME_labels_semantic.png (or NAME.png)   (0 in, 1 anomaly, 255 void)"),
        _smiyc("smiyc_anomaly_track")),
    "smiyc_obstacle_track": DatasetKind(
        "SMIYC ObstacleTrack",
        ("images/NAME.webp", "labels_masks/NAME_labels_semantic.png (or NAME.png)   (0 road, 1 obstacle, 255 void)"),
        _smiyc("smiyc_obstacle_track"), component_sizes=(50, 10)),
    "road_anomaly": DatasetKind(
        "RoadAnomaly", ("frames/NAME.jpg", "frames/NAME.labels/labels_semantic.png   (0 normal, 2 anomaly)",
                        "or flat: images/NAME.jpg + labels/NAME.png"),
        _road_anomaly),
    "lost_and_found": DatasetKind(
        "Lost & Found", ("leftImg8bit/SPLIT/SCENE/NAME_leftImg8bit.png",
                         "gtCoarse/SPLIT/SCENE/NAME_gtCoarse_labelIds.png   (1 free space, 2-200 objects)"),
        _lost_and_found, options=("split",), component_sizes=(50, 10)),
    "cityscapes": DatasetKind(
        "Cityscapes", ("leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png",
                       "gtFine/SPLIT/CITY/NAME_gtFine_labelTrainIds.png (or NAME_gtFine_labelIds.png)"),
        _cityscapes, options=("split",), component_sizes=None),
    "folders": DatasetKind(
        "Image/label folders", ("IMAGE_DIR/NAME.(png|jpg|...)", "LABEL_DIR/NAME.png   (matched by stem)"),
        _folders, options=("image_dir", "label_dir", "label_map")),
}


def detect_kind(root) -> str:
    """The dataset kind of the folder ``root``, from its sub-folders (and name, where layouts coincide).

    ``images/ + labels_masks/`` → SMIYC (ObstacleTrack when the folder name says "obstacle" or the
    images are .webp); ``original/ + labels/`` → Fishyscapes (Static when the name says "static");
    ``images/ + labels/`` → RoadAnomaly when the name says "roadanomaly"/"road_anomaly", else plain folders.
    """
    root = Path(root)
    name = root.resolve().name.lower()
    has = {d for d in ("frames", "images", "labels", "labels_masks", "original", "leftImg8bit", "gtCoarse", "gtFine")
           if (root / d).is_dir()}
    if "frames" in has:
        return "road_anomaly"
    if {"images", "labels_masks"} <= has:  # SMIYC, or any set in the official RPL layout
        if "fishyscapes" in name or "static" in name:
            return "fishyscapes_static"
        if re.search(r"lost_?and_?found|laf", name):
            return "fishyscapes_lost_and_found"
        obstacle = "obstacle" in name or any((root / "images").glob("*.webp"))
        return "smiyc_obstacle_track" if obstacle else "smiyc_anomaly_track"
    if {"original", "labels"} <= has:
        return "fishyscapes_static" if "static" in name else "fishyscapes_lost_and_found"
    if {"leftImg8bit", "gtCoarse"} <= has:
        return "lost_and_found"
    if {"leftImg8bit", "gtFine"} <= has:
        return "cityscapes"
    if {"images", "labels"} <= has:
        return "road_anomaly" if re.search(r"road_?anomaly", name) else "folders"
    raise DatasetLayoutError(
        f"cannot tell the dataset layout of {root}" + ("" if root.is_dir() else " (folder does not exist)")
        + "; expected one of:\n" + "\n".join(f"  {kind}: " + " + ".join(info.layout[:2])
                                             for kind, info in DATASET_KINDS.items()))


def open_dataset(kind: str, root, **options) -> LabelledImageDataset:
    """Open the dataset of ``kind`` (a key of :data:`DATASET_KINDS`, or ``"auto"``) at ``root``.

    Options: ``split`` for ``lost_and_found`` (default ``"test"``) and ``cityscapes`` (``"val"``);
    ``image_dir``, ``label_dir``, ``label_map`` for ``folders``.
    """
    root = Path(root)
    if kind == "auto":
        kind = detect_kind(root)
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: auto, {', '.join(DATASET_KINDS)}")
    info = DATASET_KINDS[kind]
    unsupported = sorted(set(options) - set(info.options))
    if unsupported:
        raise ValueError(f"{kind}: unsupported option(s) {unsupported}; accepted: {list(info.options) or 'none'}")
    return info.read(root, **options)
