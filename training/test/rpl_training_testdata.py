"""Tiny datasets in the real released layouts (written by the tests) and a small training config.

A module with a unique name (not ``conftest``) so that test files import it whatever other
test folders run in the same pytest session.
"""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

#: small scenes: 96×160 images, 64×128 network crops (ESPNetv2 needs multiples of 32)
SCENE_HW = (96, 160)
CROP_HW = [64, 128]


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_gray(path: Path, gray: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), gray)
    return path


def scene(rng: np.random.Generator, hw=SCENE_HW) -> np.ndarray:
    """A road-like picture: sky, grey road, noise."""
    h, w = hw
    image = np.empty((h, w, 3), np.uint8)
    image[: h // 2] = (120, 160, 220)
    image[h // 2:] = (90, 90, 90)
    noise = rng.integers(-20, 21, size=image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def make_cityscapes(root: Path, count: int = 4, split: str = "train", label_file: str = "labelTrainIds",
                    seed: int = 0) -> Path:
    """leftImg8bit/SPLIT/CITY/*_leftImg8bit.png + gtFine/SPLIT/CITY/*_gtFine_<label_file>.png."""
    rng = np.random.default_rng(seed)
    h, w = SCENE_HW
    for i in range(count):
        city = ("aachen", "bochum")[i % 2]
        name = f"{city}_{i:06d}_000019"
        write_rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", scene(rng))
        label = np.zeros((h, w), np.uint8)
        if label_file == "labelTrainIds":
            label[: h // 2], label[h // 2:], label[-4:] = 10, 0, 255  # sky, road, void
        else:
            label[: h // 2], label[h // 2:], label[-4:] = 23, 7, 0  # labelIds: sky, road, unlabelled
        write_gray(root / "gtFine" / split / city / f"{name}_gtFine_{label_file}.png", label)
    return root


def polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """The crowd format: run lengths over the column-major mask, starting with a run of 0s."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"},
                   {"id": 4, "name": "motorcycle"}, {"id": 6, "name": "bus"}, {"id": 8, "name": "truck"},
                   {"id": 10, "name": "traffic light"}, {"id": 13, "name": "stop sign"},
                   {"id": 18, "name": "dog"}, {"id": 84, "name": "book"}, {"id": 88, "name": "teddy bear"}]


def write_coco(root: Path, images, annotations, split: str = "train2017", rng=None, write_images=True) -> Path:
    """annotations/instances_SPLIT.json (+ SPLIT/*.jpg unless ``write_images`` is False)."""
    rng = rng or np.random.default_rng(1)
    (root / split).mkdir(parents=True, exist_ok=True)
    for info in images:
        if write_images:
            write_rgb(root / split / info["file_name"],
                      rng.integers(0, 256, size=(info["height"], info["width"], 3), dtype=np.uint8))
    for i, ann in enumerate(annotations, start=1):
        ann.setdefault("id", i)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", 1.0)
        ann.setdefault("bbox", [0, 0, 1, 1])
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}))
    return root


def make_small_coco(root: Path) -> Path:
    """Three 64×96 outlier images: a polygon dog, an RLE teddy bear, a book with a crowd RLE."""
    h, w = 64, 96
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w} for i in (1, 2, 3)]
    bear = np.zeros((h, w), bool)
    bear[20:40, 30:60] = True
    books = np.zeros((h, w), bool)
    books[5:15, 5:25] = True
    annotations = [
        {"image_id": 1, "category_id": 18, "segmentation": polygon(10, 10, 40, 30)},
        {"image_id": 2, "category_id": 88, "segmentation": rle(bear)},
        {"image_id": 3, "category_id": 84, "segmentation": uncompressed_rle(books), "iscrowd": 1},
    ]
    return write_coco(root, images, annotations)


def make_frames(root: Path, count: int = 4, seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_rgb(root / "drive" / f"frame{i:03d}.jpg", scene(rng))
    return root


def make_anomaly_set(root: Path, count: int = 2, seed: int = 3) -> Path:
    """images/NAME.png + labels/NAME.png (0 in, 1 anomaly): a bright box on a road scene."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = scene(rng, (128, 256))
        label = np.zeros((128, 256), np.uint8)
        label[70:100, 100:140] = 1
        image[label == 1] = (230, 40, 200)
        write_rgb(root / "images" / f"val{i}.png", image)
        write_gray(root / "labels" / f"val{i}.png", label)
    return root


def small_config(tiny_data, output_dir: Path, *overrides: str):
    """A complete config dict for a few CPU iterations on the tiny data; ``overrides`` as
    ``key.sub=value`` strings (``rpl-train --set``)."""
    from rpl_training.config import load_config

    base = {
        "output_dir": str(output_dir),
        "data": {"inlier": {"kind": "cityscapes", "root": str(tiny_data["cityscapes"]), "resize": None},
                 "outlier": {"root": str(tiny_data["coco"]), "min_size": 32, "max_images": None,
                             "relative_scale": 1.0, "scales": [0.5, 0.75]},
                 "crop_size": CROP_HW, "flip_prob": 0.5, "num_workers": 0},
        "train": {"batch_size": 2, "iterations": 4, "log_every": 2, "checkpoint_every": 2, "device": "cpu",
                  "corocl": {"max_views": 64}},
        "validation": {"root": None},
        # the small branch keeps these CPU tests quick (the registry's default is aspp / 128)
        "model": {"rpl_design": "pyramid", "rpl_width": 64},
    }
    return load_config(None, overrides, **base)


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
