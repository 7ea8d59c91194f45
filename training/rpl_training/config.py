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
from typing import Any, Dict, Optional, Sequence

import yaml

from .datasets import EXCLUDED_COCO_CLASSES

__all__ = ["DEFAULTS", "ConfigError", "load_config", "merge_config", "parse_override"]


class ConfigError(ValueError):
    """A config file that cannot be read or holds unknown keys or bad values."""


DEFAULTS: Dict[str, Any] = {
    "seed": 666,
    "output_dir": "runs/rpl",
    "model": {
        "segmenter": None,  # rpl_perception checkpoint or segmenter .pth; None = the embedded default
        "architecture": None,  # registry name; needed only for a plain .pth state dict
        "rpl_width": None,  # branch width; None = the architecture's default
    },
    "data": {
        "inlier": {
            "kind": "cityscapes",  # cityscapes | frames
            "root": None,
            "split": "train",  # cityscapes only
            "resize": [1024, 512],  # [width, height] before cropping; None keeps the size
            "video_stride": 1,  # frames only: use every n-th video frame
        },
        "outlier": {
            "kind": "coco",  # coco | cutouts
            "root": None,
            "split": "train2017",  # coco only
            "filter": "image",  # coco only: image (official) | object
            "min_size": 480,  # coco only: shortest side
            "excluded_classes": list(EXCLUDED_COCO_CLASSES),
            "max_images": 2975,  # random subset; the official code keeps len(Cityscapes train)
            "scales": [0.25, 0.5, 0.5, 0.75, 0.1, 0.125],
            "relative_scale": 0.5,  # applied to every outlier image first (scene resolution ratio)
            "paste_prob": 1.0,  # fraction of inlier crops that get an object
            "flip_prob": 0.0,  # object augmentation
            "colour_jitter": 0.0,  # object augmentation strength (brightness/contrast/saturation)
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
        "amp": True,  # CUDA only
        "sync_bn": True,  # CUDA + several processes only
        "device": "auto",  # auto | cpu | cuda
        "checkpoint_every": 185,
        "log_every": 10,
    },
    "validation": {
        "root": None,  # an anomaly set (rpl_perception.eval.datasets layouts); None = no validation
        "kind": "auto",
        "every": 185,  # iterations; the official code validates every half epoch
        "max_images": None,
        "network_size": None,  # [width, height]; None = the checkpoint's input size
    },
}

_PATH_KEYS = (("model", "segmenter"), ("data", "inlier", "root"), ("data", "outlier", "root"),
              ("validation", "root"), ("output_dir",))


def merge_config(base: Dict[str, Any], update: Dict[str, Any], where: str = "") -> Dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; keys unknown to ``base`` raise ConfigError."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {name!r}; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
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
    data["inlier"]["resize"] = pair(data["inlier"]["resize"], "data.inlier.resize")
    cfg["validation"]["network_size"] = pair(cfg["validation"]["network_size"], "validation.network_size")
    if data["crop_size"] is None:
        raise ConfigError("data.crop_size is required")
    choices = {("data", "inlier", "kind"): ("cityscapes", "frames"),
               ("data", "outlier", "kind"): ("coco", "cutouts"),
               ("data", "outlier", "filter"): ("image", "object"),
               ("train", "device"): ("auto", "cpu", "cuda")}
    for keys, allowed in choices.items():
        node = cfg
        for k in keys[:-1]:
            node = node[k]
        if node[keys[-1]] not in allowed:
            raise ConfigError(f"{'.'.join(keys)} must be one of {', '.join(allowed)}; got {node[keys[-1]]!r}")
    for name in ("inlier", "outlier"):
        if not data[name]["root"]:
            raise ConfigError(f"data.{name}.root is required (the {name} dataset folder)")
    scales = data["outlier"]["scales"]
    if not scales or not all(isinstance(s, (int, float)) and s > 0 for s in scales):
        raise ConfigError(f"data.outlier.scales must be a non-empty list of positive numbers; got {scales!r}")
    for key in ("batch_size", "epochs", "checkpoint_every", "log_every"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer; got {train[key]!r}")
    if train["iterations"] is not None and (not isinstance(train["iterations"], int) or train["iterations"] < 1):
        raise ConfigError(f"train.iterations must be a positive integer or null; got {train['iterations']!r}")
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
        if node[keys[-1]] is not None:
            node[keys[-1]] = str(Path(os.path.expandvars(str(node[keys[-1]]))).expanduser())
    _check(cfg)
    return cfg
