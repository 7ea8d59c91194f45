"""Training configuration: a YAML file merged over :data:`DEFAULTS` (the paper recipe).

Every key a config file may set is in :data:`DEFAULTS`; an unknown key is an error (a typo would
otherwise silently train with the default). ``configs/cityscapes_coco.yaml`` spells all of them
out with the reasons; :func:`load_config` accepts ``--set key.sub=value`` overrides (YAML values).

The recipe (RPL+CoroCL, Liu et al. ICCV 2023, and the official ``rpl_corocl.code/config``):
Adam, lr 7.5e-5 for the branch's context block and the projector, 10× for the branch's final 1×1,
poly decay (power 0.9) per iteration, no weight decay, batch 8, 40 epochs of Cityscapes train,
energy weight 0.05, CoroCL τ = 0.1 with at most 512 views per pool, outlier scales
{0.25, 0.5, 0.5, 0.75, 0.1, 0.125} (the official list, 0.5 twice). Resolution is per
architecture: the official WiderResNet38 sees full-resolution Cityscapes with 700×700 crops;
ESPNetv2 was trained (and runs) at 1024×512, so the defaults resize Cityscapes to that size,
crop 352×352 (700 / 2, rounded to ESPNetv2's multiple of 32) and scale COCO by 0.5 as well, so
that pasted objects keep the paper's size relative to the scene.
"""

import copy
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .datasets import EXCLUDED_COCO_CLASSES
from .transforms import OFFICIAL_OUTLIER_SCALES

__all__ = ["DEFAULTS", "ConfigError", "load_config", "merge_config", "parse_override", "inlier_sources"]


class ConfigError(ValueError):
    """A config file that cannot be read or holds unknown keys or bad values."""


DEFAULTS: Dict[str, Any] = {
    "seed": 666,
    "output_dir": "runs/rpl",
    "model": {
        "segmenter": None,  # the closed-set network: an rpl_perception model file or a .pth state dict; None = the embedded default
        "architecture": None,  # registry name; needed only for a plain .pth state dict
        "rpl_width": None,  # branch width; None = the architecture's default
        "rpl_design": None,  # branch design (ESPNetv2: aspp | pyramid | aspp_fine); None = the architecture's default
        "rpl_fine_channels": None,  # aspp_fine only: its fine path's width; None = the design's default (32)
    },
    "data": {
        # one inlier source, or a list of them (each with these keys) sampled by their weights
        "inlier": {
            "kind": "cityscapes",  # cityscapes | frames | idd
            "root": None,
            "split": "train",  # cityscapes: one split; idd: one or a list
            "resize": [1024, 512],  # [width, height] before cropping; None keeps the size
            "video_stride": 1,  # frames only: use every n-th video frame
            "include": None,  # frames only: glob patterns under root (default: every file, recursively)
            "void_labels": [],  # label values that enter no loss term (e.g. IDD's living things: [2])
            "weight": 1.0,  # sampling weight among several sources (share of each epoch)
            "object_scale": None,  # pasted objects' relative scale in this source; None = outlier.relative_scale
        },
        "outlier": {
            "kind": "coco",  # coco | cutouts
            "root": None,  # a folder, or a list of folders of the same kind
            "split": "train2017",  # coco only: one split, a list, or "all" (every annotations/instances_*.json)
            "filter": "image",  # coco only: image (official) | object
            "min_size": 480,  # coco only: shortest side
            "excluded_classes": list(EXCLUDED_COCO_CLASSES),
            "max_images": 2975,  # random subset; the official code keeps len(Cityscapes train)
            "scales": list(OFFICIAL_OUTLIER_SCALES),
            "relative_scale": 0.5,  # applied to every outlier image first (scene resolution ratio)
            "paste_prob": 1.0,  # fraction of inlier crops that get an object
            "flip_prob": 0.0,  # object augmentation
            "colour_jitter": 0.0,  # object augmentation strength (brightness/contrast/saturation)
            "on_road": {  # obstacles pasted where obstacles lie (rpl_training.transforms.RoadPlacement)
                "share": 0.0,  # of the pasted objects, placed on the frozen closed-set network's road pixels
                "height_at_bottom": [0.04, 0.3],  # object height at the frame's bottom row / frame height
                "min_height": 6,  # px; smaller objects (near the horizon) are not pasted there
                "soft_edge": 0.0,  # σ px of the outline's feathering (0: hard edges)
                "shadow": 0.0,  # darkening (0-1) of an ellipse of road under the object
                "rows": "any",  # contact rows: any (below the horizon) | feasible (road rows that hold min_height)
                "horizon_quantile": 0.0,  # horizon = row above which this fraction of road pixels lies (0: topmost)
                "classes": [0],  # train ids that count as road (0 road, 1 sidewalk, 9 terrain)
                "cache_dir": "runs/road_masks",  # the masks, computed once per segmenter (rpl_training.road_masks)
            },
        },
        "crop_size": [352, 352],  # [height, width]; multiples of the segmenter's size divisor
        "flip_prob": 0.8,  # inlier horizontal flip; the official random_mirror flips 80 %
        "num_workers": 8,
    },
    "train": {
        "batch_size": 8,  # global: split evenly over the processes
        "epochs": 40,
        "iterations": None,  # overrides epochs when set
        "lr": 7.5e-5,
        "residual_lr_factor": 10.0,  # lr multiplier of the branch's final 1×1 (trained from scratch)
        "lr_power": 0.9,
        "warmup_iterations": 0,  # linear lr warm-up (the official recipe has none)
        "weight_decay": 0.0,
        "energy_weight": 0.05,
        "entropy_t": 1.0,
        "corocl": {
            "enabled": True,
            "weight": 1.0,
            "tau": 0.1,
            "max_views": 512,
            "min_images": 2,  # per process, as the official trainer
        },
        "compile": False,  # torch.compile the frozen closed-set network (torch backend) and the loss terms (minutes to
                           # compile, then faster)
        "frozen": {
            "where": "auto",  # model | loader | auto: the frozen pass in the data loader's worker on a CPU
                              # (overlapping the trainable step) when num_workers >= 1, else in the model
            "backend": "auto",  # loader only: torch | onnxruntime | auto (onnxruntime where installed)
        },
        "threads": None,  # PyTorch threads of the training process; None = the cores the loader's workers leave
                          # when they run the frozen pass, else PyTorch's default
        "amp": True,  # CUDA only
        "sync_bn": True,  # CUDA + several processes only
        "device": "auto",  # auto | cpu | cuda
        "checkpoint_every": 185,
        "log_every": 10,
    },
    "validation": {
        "root": None,  # an anomaly set (rpl_perception.eval.datasets layouts); None = no validation
        "suite": None,  # or a suite file of several sets (rpl_perception.eval.suite); the best
                        # checkpoint is the one with the highest mean AP over its sets
        "kind": "auto",
        "every": 185,  # iterations; the official code validates every half epoch
        "max_images": None,
        "network_size": None,  # [width, height]; None = the checkpoint's input size
        "keep_checkpoints": True,  # every validation's model file in checkpoints/ (rules applied afterwards)
    },
}

_PATH_KEYS = (("model", "segmenter"), ("data", "outlier", "root"), ("data", "outlier", "on_road", "cache_dir"),
              ("validation", "root"), ("validation", "suite"), ("output_dir",))


def inlier_sources(data_cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The inlier sources of a ``data`` section as a list (one mapping is one source)."""
    inlier = data_cfg["inlier"]
    return list(inlier) if isinstance(inlier, list) else [inlier]


def _expand_path(value):
    if value is None:
        return None
    if isinstance(value, list):
        return [_expand_path(v) for v in value]
    return str(Path(os.path.expandvars(str(value))).expanduser())


def merge_config(base: Dict[str, Any], update: Dict[str, Any], where: str = "") -> Dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; keys unknown to ``base`` raise ConfigError."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {name!r}; known keys here: {', '.join(sorted(base))}")
        if name == "data.inlier" and isinstance(value, list):  # several sources, each over the defaults
            if not value or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"config key {name!r} must be a mapping or a non-empty list of mappings")
            merged[key] = [merge_config(DEFAULTS["data"]["inlier"], v, f"{name}[{i}].") for i, v in enumerate(value)]
        elif name == "data.inlier" and isinstance(base[key], list) and isinstance(value, dict):
            raise ConfigError(f"config key {name!r} lists several sources; override one with a whole list")
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a mapping; got {value!r}")
            merged[key] = merge_config(base[key], value, f"{name}.")
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> Dict[str, Any]:
    """``"train.lr=1e-4"`` → ``{"train": {"lr": 1e-4}}`` (the value is parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    nested: Dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value)
    return nested


def _check(cfg: Dict[str, Any]) -> None:
    def pair(value, name):
        if value is None:
            return None
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, int) and v > 0 for v in value)):
            raise ConfigError(f"{name} must be two positive integers; got {value!r}")
        return [int(v) for v in value]

    data, train = cfg["data"], cfg["train"]
    data["crop_size"] = pair(data["crop_size"], "data.crop_size")
    cfg["validation"]["network_size"] = pair(cfg["validation"]["network_size"], "validation.network_size")
    if data["crop_size"] is None:
        raise ConfigError("data.crop_size is required")
    sources = inlier_sources(data)
    for i, source in enumerate(sources):
        where = "data.inlier" if len(sources) == 1 else f"data.inlier[{i}]"
        source["resize"] = pair(source["resize"], f"{where}.resize")
        if source["kind"] not in ("cityscapes", "frames", "idd"):
            raise ConfigError(f"{where}.kind must be one of cityscapes, frames, idd; got {source['kind']!r}")
        if not source["root"]:
            raise ConfigError(f"{where}.root is required (the inlier dataset folder)")
        if not isinstance(source["weight"], (int, float)) or source["weight"] <= 0:
            raise ConfigError(f"{where}.weight must be a positive number; got {source['weight']!r}")
        voids = source["void_labels"] or []
        if not all(isinstance(v, int) and 0 <= v <= 255 for v in voids):
            raise ConfigError(f"{where}.void_labels must be label values 0-255; got {voids!r}")
        if source["object_scale"] is not None and not (isinstance(source["object_scale"], (int, float))
                                                      and source["object_scale"] > 0):
            raise ConfigError(f"{where}.object_scale must be a positive number or null; got {source['object_scale']!r}")
    choices = {("data", "outlier", "kind"): ("coco", "cutouts"),
               ("data", "outlier", "filter"): ("image", "object"),
               ("train", "device"): ("auto", "cpu", "cuda"),
               ("train", "frozen", "where"): ("auto", "model", "loader"),
               ("train", "frozen", "backend"): ("auto", "torch", "onnxruntime")}
    for keys, allowed in choices.items():
        node = cfg
        for k in keys[:-1]:
            node = node[k]
        if node[keys[-1]] not in allowed:
            raise ConfigError(f"{'.'.join(keys)} must be one of {', '.join(allowed)}; got {node[keys[-1]]!r}")
    if not data["outlier"]["root"]:
        raise ConfigError("data.outlier.root is required (the outlier dataset folder)")
    scales = data["outlier"]["scales"]
    if not scales or not all(isinstance(s, (int, float)) and s > 0 for s in scales):
        raise ConfigError(f"data.outlier.scales must be a non-empty list of positive numbers; got {scales!r}")
    road = data["outlier"]["on_road"]
    if not isinstance(road["share"], (int, float)) or not 0 <= road["share"] <= 1:
        raise ConfigError(f"data.outlier.on_road.share must be a number in [0, 1]; got {road['share']!r}")
    heights = road["height_at_bottom"]
    if not (isinstance(heights, list) and len(heights) == 2 and 0 < heights[0] <= heights[1] <= 1):
        raise ConfigError(f"data.outlier.on_road.height_at_bottom must be [low, high] with 0 < low <= high <= 1; "
                          f"got {heights!r}")
    if road["rows"] not in ("any", "feasible"):
        raise ConfigError(f"data.outlier.on_road.rows must be any or feasible; got {road['rows']!r}")
    if not isinstance(road["horizon_quantile"], (int, float)) or not 0 <= road["horizon_quantile"] < 1:
        raise ConfigError(f"data.outlier.on_road.horizon_quantile must be a number in [0, 1); "
                          f"got {road['horizon_quantile']!r}")
    if cfg["validation"]["root"] and cfg["validation"]["suite"]:
        raise ConfigError("give validation.root (one set) or validation.suite (a suite file), not both")
    if not isinstance(train["warmup_iterations"], int) or train["warmup_iterations"] < 0:
        raise ConfigError(f"train.warmup_iterations must be an integer >= 0; got {train['warmup_iterations']!r}")
    for key in ("batch_size", "epochs", "checkpoint_every", "log_every"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer; got {train[key]!r}")
    if train["iterations"] is not None and (not isinstance(train["iterations"], int) or train["iterations"] < 1):
        raise ConfigError(f"train.iterations must be a positive integer or null; got {train['iterations']!r}")
    if train["threads"] is not None and (not isinstance(train["threads"], int) or train["threads"] < 1):
        raise ConfigError(f"train.threads must be a positive integer or null; got {train['threads']!r}")
    for key in ("lr", "residual_lr_factor", "lr_power", "entropy_t"):
        if not isinstance(train[key], (int, float)) or train[key] <= 0:
            raise ConfigError(f"train.{key} must be a positive number; got {train[key]!r}")


def load_config(path: Optional[Path] = None, overrides: Sequence[str] = (), **updates) -> Dict[str, Any]:
    """DEFAULTS ← YAML file ``path`` ← ``updates`` (sections as dicts) ← ``overrides`` (``key.sub=value``).

    Path values are expanded (``~``, ``$VARS``) and kept relative to the working directory.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping; got {type(loaded).__name__}")
        cfg = merge_config(cfg, loaded)
    for key, value in updates.items():
        cfg = merge_config(cfg, {key: value})
    for text in overrides:
        cfg = merge_config(cfg, parse_override(text))
    for keys in _PATH_KEYS:
        node = cfg
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = _expand_path(node[keys[-1]])
    for source in inlier_sources(cfg["data"]):
        source["root"] = _expand_path(source["root"])
    _check(cfg)
    return cfg
