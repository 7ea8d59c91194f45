"""Model files: one safetensors file holds closed-set network + RPL weights + metadata; PyTorch files of
other code bases load too.

* :mod:`.metadata` — :class:`CheckpointMeta` (architecture, classes, input size, normalisation,
  score settings, display range, provenance) and the loading errors;
* :mod:`.model_file` — the safetensors format: save, read, build the network;
* :mod:`.pytorch_files` — official RPL / NVIDIA WiderResNet38 / plain state-dict ``.pth`` files.

Loading never executes pickled code.
"""

from ..resources import DEFAULT_CHECKPOINT
from .metadata import FORMAT, CheckpointError, CheckpointMeta, describe_mismatch, load_state_dict_strict
from .model_file import build_model, load_closed_set, load_model, read_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "CheckpointMeta", "FORMAT", "save_checkpoint", "read_checkpoint",
           "load_model", "build_model", "load_closed_set", "load_state_dict_strict", "describe_mismatch",
           "DEFAULT_CHECKPOINT"]
