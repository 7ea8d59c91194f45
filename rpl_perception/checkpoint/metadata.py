"""The metadata of a model file (:class:`CheckpointMeta`) and the errors of loading one.

Shared by the safetensors format (:mod:`.model_file`) and the PyTorch-file adapters
(:mod:`.pytorch_files`); imports no model code beyond the architecture registry's type.
"""

import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..models import Architecture

__all__ = ["FORMAT", "CheckpointError", "CheckpointMeta", "describe_mismatch", "load_state_dict_strict"]

FORMAT = "rpl_perception/1"


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
    #: the branch design (``Architecture.rpl_designs``); None: ``Architecture.design_of_unrecorded``
    rpl_design: Optional[str] = None
    #: the fine path's width of a design that has one (``aspp_fine``); None: the design's default
    rpl_fine_channels: Optional[int] = None
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
