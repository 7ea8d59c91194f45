"""The single-file model format: segmenter + RPL weights + metadata in one safetensors file.

safetensors holds only tensors and a string→string header, so loading never executes pickled
code. Tensors are grouped by prefix: ``segmenter.*`` (the closed-set network, its original key
names), ``rpl.*`` (the RPL branch, optional) and ``projector.*`` (the CoroCL projector, kept for
resuming training, unused at inference). The header key ``rpl_perception`` holds the JSON
metadata described by :class:`CheckpointMeta`.

PyTorch files (``.pth``/``.pt``) load too, with ``weights_only=True``: plain segmenter state
dicts and the official RPL / NVIDIA WiderResNet38 files (see :mod:`rpl_perception.models.adapters`).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .models import Architecture, RPLSegmenter, get_architecture

__all__ = ["CheckpointError", "CheckpointMeta", "FORMAT", "save_checkpoint", "read_checkpoint",
           "load_model", "build_model", "load_state_dict_strict", "describe_mismatch",
           "DEFAULT_CHECKPOINT"]

FORMAT = "rpl_perception/1"
_HEADER_KEY = "rpl_perception"
_GROUPS = ("segmenter", "rpl", "projector")

#: the embedded default model, shipped inside the package
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "espnetv2_cityscapes.safetensors"


class CheckpointError(ValueError):
    """A model file that is missing, unreadable, or does not match what the code expects."""


@dataclass
class CheckpointMeta:
    architecture: str
    class_names: List[str]
    input_size: Tuple[int, int]  # (width, height) the network runs at by default
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    rpl_width: Optional[int] = None  # None: no RPL branch in the file
    #: the branch design (``Architecture.rpl_designs``); None: the architecture's first design
    rpl_design: Optional[str] = None
    score: str = "energy"  # default score of this model
    smoothing_sigma: float = 1.0
    #: per score, the (low, high) score range that heatmap colours span
    display_range: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    #: per score, the default threshold of the binary anomaly mask
    anomaly_threshold: Dict[str, float] = field(default_factory=dict)
    provenance: Dict[str, object] = field(default_factory=dict)
    format: str = FORMAT

    @classmethod
    def for_architecture(cls, arch: Architecture, **kwargs) -> "CheckpointMeta":
        return cls(architecture=arch.name, class_names=list(arch.class_names),
                   input_size=tuple(arch.input_size), mean=tuple(arch.mean), std=tuple(arch.std),
                   **kwargs)

    @property
    def num_inlier(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source) -> "CheckpointMeta":
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise CheckpointError(f"{source}: format {data.get('format')!r}, expected {FORMAT!r}")
            data["input_size"] = tuple(data["input_size"])
            data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
            data["display_range"] = {k: tuple(v) for k, v in data.get("display_range", {}).items()}
            return cls(**data)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{source}: malformed rpl_perception metadata ({exc})") from None


def save_checkpoint(path, meta: CheckpointMeta, model: RPLSegmenter,
                    projector: Optional[nn.Module] = None) -> Path:
    """Write ``model`` (and optionally the CoroCL projector) with ``meta`` to one safetensors file."""
    path = Path(path)
    if model.has_branch != (meta.rpl_width is not None):
        raise ValueError("meta.rpl_width must be set exactly when the model has an RPL branch")
    tensors = {f"segmenter.{k}": v for k, v in model.segmenter.state_dict().items()}
    if model.has_branch:
        tensors.update({f"rpl.{k}": v for k, v in model.branch.state_dict().items()})
    if projector is not None:
        tensors.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={_HEADER_KEY: meta.to_json()})
    tmp.replace(path)  # never leave a half-written model behind
    return path


def _split_groups(tensors: Dict[str, torch.Tensor], source) -> Dict[str, Dict[str, torch.Tensor]]:
    groups: Dict[str, Dict[str, torch.Tensor]] = {g: {} for g in _GROUPS}
    for key, value in tensors.items():
        group, _, rest = key.partition(".")
        if group not in groups or not rest:
            raise CheckpointError(f"{source}: unexpected tensor {key!r} (expected prefixes "
                                  f"{', '.join(g + '.' for g in _GROUPS)})")
        groups[group][rest] = value
    return groups


def read_checkpoint(path, architecture: Optional[str] = None):
    """Read a model file → ``(meta, {"segmenter": …, "rpl": …, "projector": …})`` state dicts.

    Any other file is a PyTorch file, read by
    :func:`rpl_perception.models.adapters.read_pytorch_checkpoint`: official RPL / RPL+CoroCL and
    NVIDIA WiderResNet38 files are recognised by their keys; a plain segmenter state dict gets
    metadata from ``architecture``'s registry entry (default ``espnetv2_cityscapes``), no RPL weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        if _HEADER_KEY not in header:
            raise CheckpointError(f"{path}: no '{_HEADER_KEY}' metadata; expected a checkpoint "
                                  "written by rpl_perception.checkpoint.save_checkpoint")
        meta = CheckpointMeta.from_json(header[_HEADER_KEY], path)
        if architecture is not None and architecture != meta.architecture:
            raise CheckpointError(f"{path}: holds architecture {meta.architecture!r}, "
                                  f"expected {architecture!r}")
        return meta, _split_groups(tensors, path)
    from .models.adapters import read_pytorch_checkpoint  # late: adapters import this module

    return read_pytorch_checkpoint(path, architecture)


def describe_mismatch(expected: Dict[str, torch.Size], state: Dict[str, torch.Tensor]) -> List[str]:
    """The "missing keys" / "unexpected keys" / "shape mismatches" parts of a load error (empty
    when ``state`` has exactly the ``expected`` keys and shapes)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k])}"
                  for k in expected if k in state and state[k].shape != expected[k]]

    def show(items):
        return ", ".join(items[:8]) + (f" … ({len(items)} in all)" if len(items) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches: {show(mismatched)}")
    return parts


def load_state_dict_strict(module: nn.Module, state: Dict[str, torch.Tensor], source, what: str):
    """``load_state_dict(strict=True)`` with an error that names the file, keys and shapes."""
    parts = describe_mismatch({k: v.shape for k, v in module.state_dict().items()}, state)
    if parts:
        raise CheckpointError("; ".join(
            [f"{source}: the {what} weights do not match {type(module).__name__}"] + parts))
    module.load_state_dict(state, strict=True)


def load_model(path, architecture: Optional[str] = None, with_branch: bool = True):
    """Build the network stored in ``path`` → ``(RPLSegmenter in eval mode, CheckpointMeta)``."""
    meta, groups = read_checkpoint(path, architecture)
    return build_model(meta, groups, path, with_branch), meta


def build_model(meta: CheckpointMeta, groups, source, with_branch: bool = True) -> RPLSegmenter:
    """The :class:`RPLSegmenter` (eval mode) that ``meta`` describes, strictly loaded from ``groups``."""
    arch = get_architecture(meta.architecture)
    segmenter = arch.build_segmenter()
    load_state_dict_strict(segmenter, groups["segmenter"], source, "segmenter")
    branch = None
    if with_branch and meta.rpl_width is not None:
        design = meta.rpl_design or arch.rpl_designs[0]
        if design not in arch.rpl_designs:
            raise CheckpointError(f"{source}: RPL branch design {design!r} is unknown for {arch.name}; "
                                  f"known: {', '.join(arch.rpl_designs)}")
        branch = arch.build_rpl_branch(segmenter, meta.rpl_width, design)
        load_state_dict_strict(branch, groups["rpl"], source, "RPL branch")
    elif with_branch and groups["rpl"]:
        raise CheckpointError(f"{source}: holds rpl.* tensors but its metadata has no rpl_width")
    return RPLSegmenter(segmenter, branch).eval()
