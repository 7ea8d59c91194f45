"""PyTorch model files from other code bases → rpl_perception's state dict groups, and back.

:func:`read_pytorch_checkpoint` is what :func:`rpl_perception.checkpoint.read_checkpoint` runs for
any file that is not ``.safetensors``. Files load with ``torch.load(weights_only=True)``, so no
pickled code ever runs. A state dict may sit under ``model``, ``model_state`` and/or
``state_dict`` (unwrapped in that order, as the official RPL ``test.py`` does) and may carry the
DataParallel prefix ``module.``. The formats (:data:`FORMATS`, fact sheet
``shared/specs/wrn38_rpl.md`` section 8):

- ``official-rpl``: the released RPL (300 keys) and RPL+CoroCL (302 keys) WiderResNet38
  checkpoints, keys ``branch1.…``. Mapped by :data:`OFFICIAL_PREFIXES`.
- ``nvidia-wrn38``: NVIDIA's ``cityscapes_best.pth`` (DeepWV3Plus closed-set network, 268 keys under
  ``state_dict``, prefixed ``module.``; ``criterion.nll_loss.weight`` is dropped). No RPL weights:
  a training run starts its branch from the closed-set network's ASPP (``Architecture.build_rpl_branch``).
- ``state-dict``: a plain closed-set state dict of a registered architecture (default ESPNetv2).

Each format is checked key by key before any module is built; a wrong file raises
:class:`~rpl_perception.checkpoint.CheckpointError` naming the expected format and the missing,
unexpected or mis-shaped keys.
"""

from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ..models import get_architecture
from .metadata import CheckpointError, CheckpointMeta, describe_mismatch

__all__ = ["FORMATS", "OFFICIAL_PREFIXES", "WRN38_ARCHITECTURE", "read_pytorch_checkpoint",
           "convert_pytorch_object", "unwrap_state_dict", "detect_format", "official_to_groups", "groups_to_official",
           "official_template", "save_official_rpl"]

FORMATS = {
    "official-rpl": "RPL / RPL+CoroCL WiderResNet38 checkpoint, keys 'branch1.…' (github.com/yyliu01/RPL)",
    "nvidia-wrn38": "NVIDIA DeepWV3Plus cityscapes_best.pth, closed-set keys 'mod1.…' to 'final.…'",
    "state-dict": "plain closed-set state dict of a registered architecture",
}
WRAPPER_KEYS = ("model", "model_state", "state_dict")
DATA_PARALLEL_PREFIX = "module."
WRN38_ARCHITECTURE = "deeplabv3plus_wrn38_cityscapes"
#: NVIDIA files also hold the training loss's class weights, which the official loader skips
NVIDIA_SKIPPED_KEYS = ("criterion.nll_loss.weight",)

#: (group, our key prefix, official key prefix), most specific first: the official residual block
#: is our RPL branch (its ASPP + bottleneck are the branch's ``context``, ``atten_aspp_final`` is
#: ``residual``), ``proj_head``'s single 1×1 is the CoroCL projector (a plain ``nn.Conv2d``, as
#: rpl_training builds it), and the rest of ``branch1`` is the closed-set network.
OFFICIAL_PREFIXES = (
    ("rpl", "context.aspp.", "branch1.residual_block.atten_aspp."),
    ("rpl", "context.bot_aspp.", "branch1.residual_block.bot_atten_aspp."),
    ("rpl", "residual.", "branch1.residual_block.atten_aspp_final."),
    ("projector", "", "branch1.residual_block.proj_head.proj.0."),
    ("closed_set", "", "branch1."),
)
_PROJECTOR_PREFIX = "branch1.residual_block.proj_head."

Groups = Dict[str, Dict[str, torch.Tensor]]


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; all mean the same here
        # torch's weights-only refusal is a page of advice; its one informative line says what was refused
        reason = next((line.strip() for line in str(exc).splitlines() if "WeightsUnpickler" in line),
                      str(exc))
        raise CheckpointError(
            f"{path}: not a loadable PyTorch state dict ({reason}). Files load with weights_only=True "
            "and never run pickled code; where you trust the file, re-save only its tensors, e.g. "
            "torch.save(torch.load(f)['state_dict'], out)") from None


def unwrap_state_dict(obj, source) -> Dict[str, torch.Tensor]:
    """The name → tensor dict inside ``obj`` (under ``model``/``model_state``/``state_dict``),
    without a leading DataParallel ``module.`` on its keys."""
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapper = next((k for k in WRAPPER_KEYS if k in obj), None)
        if wrapper is None:
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            wrappers = ", ".join(repr(k) for k in WRAPPER_KEYS[:-1]) + f" or {WRAPPER_KEYS[-1]!r}"
            raise CheckpointError(f"{source}: expected a plain state dict (name → tensor), optionally "
                                  f"wrapped in {wrappers}; got a dict with keys {keys}")
        obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a plain state dict (name → tensor) of the "
                              f"closed-set network, got {type(obj).__name__}")
    return {_strip_data_parallel(k): v for k, v in obj.items()}


def _strip_data_parallel(key: str) -> str:
    while key.startswith(DATA_PARALLEL_PREFIX):
        key = key[len(DATA_PARALLEL_PREFIX):]
    return key


def detect_format(state: Dict[str, torch.Tensor]) -> str:
    """Which of :data:`FORMATS` an unwrapped state dict looks like."""
    if any(k.startswith("branch1.") for k in state):
        return "official-rpl"
    if "mod1.conv1.weight" in state:
        return "nvidia-wrn38"
    return "state-dict"


def official_to_groups(state: Dict[str, torch.Tensor]) -> Groups:
    """Official RPL keys → ``{"closed_set", "rpl", "projector"}`` state dicts (pure renaming)."""
    groups: Groups = {"closed_set": {}, "rpl": {}, "projector": {}}
    for key, value in state.items():
        for group, ours, theirs in OFFICIAL_PREFIXES:
            if key.startswith(theirs):
                groups[group][ours + key[len(theirs):]] = value
                break
        else:
            raise CheckpointError(f"official RPL key {key!r} does not start with 'branch1.'")
    return groups


def groups_to_official(groups: Groups) -> Dict[str, torch.Tensor]:
    """The inverse of :func:`official_to_groups`, in the official key order (residual block
    between ``mod7`` and ``aspp``, as ``DeepWV3Plus`` registers it)."""
    def official(group, key):
        for g, ours, theirs in OFFICIAL_PREFIXES:
            if g == group and key.startswith(ours):
                return theirs + key[len(ours):]
        raise ValueError(f"no official name for {group}.{key}")

    block = {official(g, k): v for g in ("rpl", "projector") for k, v in groups.get(g, {}).items()}
    state: Dict[str, torch.Tensor] = {}
    for key, value in groups["closed_set"].items():
        if block and not key.startswith("mod"):
            state.update(block)
            block = {}
        state[official("closed_set", key)] = value
    state.update(block)
    return state


@lru_cache(maxsize=None)
def _wrn38_groups_on_meta() -> Groups:
    arch = get_architecture(WRN38_ARCHITECTURE)
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        closed_set = arch.build_closed_set()
        branch = arch.build_rpl_branch(closed_set, arch.default_rpl_width, arch.rpl_designs[0])
        projector = torch.nn.Conv2d(branch.context_channels, closed_set.head_channels, 1, bias=True)
    return {"closed_set": closed_set.state_dict(), "rpl": branch.state_dict(),
            "projector": projector.state_dict()}


def official_template(with_projector: bool = True) -> Dict[str, torch.Tensor]:
    """Every key of an official checkpoint, as meta tensors with the right shape and dtype."""
    groups = dict(_wrn38_groups_on_meta())
    if not with_projector:
        groups["projector"] = {}
    return groups_to_official(groups)


def _check(state, expected: Dict[str, torch.Tensor], source, fmt: str) -> Dict[str, torch.Tensor]:
    state = dict(state)
    # BatchNorm accepts a dict without num_batches_tracked (older files); fill in what it would
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state \
                and key.replace("num_batches_tracked", "running_mean") in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    parts = describe_mismatch({k: v.shape for k, v in expected.items()}, state)
    if parts:
        raise CheckpointError(f"{source}: not a valid {fmt!r} checkpoint ({FORMATS[fmt]}); "
                              + "; ".join(parts))
    return state


def read_pytorch_checkpoint(path, architecture: Optional[str] = None,
                            fmt: Optional[str] = None) -> Tuple[CheckpointMeta, Groups]:
    """Read a PyTorch file → ``(meta, groups)`` as :func:`~rpl_perception.checkpoint.read_checkpoint`.

    ``fmt`` forces one of :data:`FORMATS` (default: detected from the keys). ``architecture``
    names the closed-set network of a ``state-dict`` file (default ``espnetv2_cityscapes``) and must agree
    with the WRN38 formats.
    """
    path = Path(path)
    return convert_pytorch_object(_load(path), path, architecture, fmt)


def convert_pytorch_object(obj, source, architecture: Optional[str] = None,
                           fmt: Optional[str] = None) -> Tuple[CheckpointMeta, Groups]:
    """:func:`read_pytorch_checkpoint` for an object already loaded (``source`` names it in errors)."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    state = unwrap_state_dict(obj, source)
    fmt = fmt or detect_format(state)
    provenance = {"source": str(source), "format": fmt}
    if fmt == "state-dict":
        if architecture is None and "classifier.aspp.project.0.weight" in state:
            depth = 101 if "backbone.layer3.22.conv1.weight" in state else 50
            raise CheckpointError(
                f"{source}: looks like a DeepLabV3+ ResNet-{depth} state dict, whose output stride "
                f"the weights do not record; name the architecture, e.g. "
                f"deeplabv3plus_resnet{depth}_os16_cityscapes (or _os8_), with convert-checkpoint "
                f"--from state-dict --arch NAME")
        arch = get_architecture(architecture or "espnetv2_cityscapes")
        return (CheckpointMeta.for_architecture(arch, provenance=provenance),
                {"closed_set": state, "rpl": {}, "projector": {}})
    if architecture is not None and architecture != WRN38_ARCHITECTURE:
        raise CheckpointError(f"{source}: holds a {fmt!r} checkpoint of architecture "
                              f"{WRN38_ARCHITECTURE!r}, expected {architecture!r}")
    arch = get_architecture(WRN38_ARCHITECTURE)
    if fmt == "nvidia-wrn38":
        state = {k: v for k, v in state.items() if k not in NVIDIA_SKIPPED_KEYS}
        state = _check(state, _wrn38_groups_on_meta()["closed_set"], source, fmt)
        return (CheckpointMeta.for_architecture(arch, provenance=provenance),
                {"closed_set": state, "rpl": {}, "projector": {}})
    with_projector = any(k.startswith(_PROJECTOR_PREFIX) for k in state)
    state = _check(state, official_template(with_projector), source, fmt)
    provenance["variant"] = "RPL+CoroCL" if with_projector else "RPL"
    meta = CheckpointMeta.for_architecture(arch, rpl_width=arch.default_rpl_width,
                                           score="rpl_energy", provenance=provenance)
    return meta, official_to_groups(state)


def save_official_rpl(path, groups: Groups) -> Path:
    """Write WRN38 groups as the official code saves them: ``{"model": state_dict}``, loadable by
    its ``test.py`` with ``strict=True`` (302 keys with a projector, 300 without)."""
    path = Path(path)
    state = groups_to_official(groups)
    expected = official_template(with_projector=bool(groups.get("projector")))
    _check(state, expected, path, "official-rpl")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in state.items()}}, path)
    return path
