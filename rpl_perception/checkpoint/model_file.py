"""The single-file model format: closed-set network + RPL weights + metadata in one safetensors file.

safetensors holds only tensors and a string→string header, so loading never executes pickled
code. Tensors are grouped by prefix: ``closed_set.*`` (the closed-set network, its original key
names; files written before it had that name call the group ``segmenter.*``, and still load), ``rpl.*`` (the RPL branch, optional) and ``projector.*`` (the CoroCL projector, kept for
resuming training, unused at inference). The header key ``rpl_perception`` holds the JSON
metadata described by :class:`CheckpointMeta`.

PyTorch files (``.pth``/``.pt``) load too, with ``weights_only=True``: plain closed-set state
dicts and the official RPL / NVIDIA WiderResNet38 files (see :mod:`.pytorch_files`).
"""

from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..models import RPLNetwork, get_architecture
from .metadata import CheckpointError, CheckpointMeta, load_state_dict_strict
from .pytorch_files import read_pytorch_checkpoint

__all__ = ["save_checkpoint", "read_checkpoint", "load_model", "build_model", "load_closed_set"]

_HEADER_KEY = "rpl_perception"
_GROUPS = ("closed_set", "rpl", "projector")
#: the closed-set group's prefix in files written before it was named ``closed_set`` (the
#: shipped model file among them)
_EARLIER_PREFIXES = {"segmenter": "closed_set"}


def save_checkpoint(path, meta: CheckpointMeta, model: RPLNetwork,
                    projector: Optional[nn.Module] = None) -> Path:
    """Write ``model`` (and optionally the CoroCL projector) with ``meta`` to one safetensors file."""
    path = Path(path)
    if model.has_branch != (meta.rpl_width is not None):
        raise ValueError("meta.rpl_width must be set exactly when the model has an RPL branch")
    tensors = {f"closed_set.{k}": v for k, v in model.closed_set.state_dict().items()}
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
        group = _EARLIER_PREFIXES.get(group, group)
        if group not in groups or not rest:
            raise CheckpointError(f"{source}: unexpected tensor {key!r} (expected prefixes "
                                  f"{', '.join(g + '.' for g in _GROUPS)})")
        groups[group][rest] = value
    return groups


def read_checkpoint(path, architecture: Optional[str] = None):
    """Read a model file → ``(meta, {"closed_set": …, "rpl": …, "projector": …})`` state dicts.

    Any other file is a PyTorch file, read by
    :func:`~rpl_perception.checkpoint.pytorch_files.read_pytorch_checkpoint`: official RPL / RPL+CoroCL and
    NVIDIA WiderResNet38 files are recognised by their keys; a plain closed-set state dict gets
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
    return read_pytorch_checkpoint(path, architecture)


def load_model(path, architecture: Optional[str] = None, with_branch: bool = True):
    """Build the network stored in ``path`` → ``(RPLNetwork in eval mode, CheckpointMeta)``."""
    meta, groups = read_checkpoint(path, architecture)
    return build_model(meta, groups, path, with_branch), meta


def build_model(meta: CheckpointMeta, groups, source, with_branch: bool = True) -> RPLNetwork:
    """The :class:`RPLNetwork` (eval mode) that ``meta`` describes, strictly loaded from ``groups``."""
    arch = get_architecture(meta.architecture)
    closed_set = arch.build_closed_set()
    load_state_dict_strict(closed_set, groups["closed_set"], source, "closed_set")
    branch = None
    if with_branch and meta.rpl_width is not None:
        design = meta.rpl_design or arch.design_of_unrecorded
        if design not in arch.rpl_designs:
            raise CheckpointError(f"{source}: RPL branch design {design!r} is unknown for {arch.name}; "
                                  f"known: {', '.join(arch.rpl_designs)}")
        try:
            branch = arch.build_rpl_branch(closed_set, meta.rpl_width, design, fine_channels=meta.rpl_fine_channels)
        except ValueError as exc:
            raise CheckpointError(f"{source}: its RPL branch metadata cannot be built ({exc})") from None
        load_state_dict_strict(branch, groups["rpl"], source, "RPL branch")
    elif with_branch and groups["rpl"]:
        raise CheckpointError(f"{source}: holds rpl.* tensors but its metadata has no rpl_width")
    return RPLNetwork(closed_set, branch).eval()


def load_closed_set(path, architecture: Optional[str] = None) -> nn.Module:
    """Frozen closed-set network in eval mode: normalised (B,3,H,W) → logits (B,C,H,W).

    ``path`` is an rpl_perception checkpoint (``.safetensors``) or a plain PyTorch state dict of
    the closed-set network (loaded with ``weights_only=True``; ``architecture`` defaults to ESPNetv2).
    Keys must match exactly; a mismatch raises :class:`CheckpointError` naming the file and the keys.
    """
    network, _ = load_model(Path(path), architecture=architecture, with_branch=False)
    return network.closed_set
