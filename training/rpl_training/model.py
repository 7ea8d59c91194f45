"""What is trained: the RPL branch (and the CoroCL projector) on a frozen closed-set network, its optimiser
and one step's losses."""

import dataclasses
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, CheckpointMeta, load_model
from rpl_perception.models import RPLNetwork, get_architecture
from rpl_perception.models.rpl import init_kaiming_fan_in

from .frozen import FROZEN_KEYS, FrozenClosedSet, FrozenEncoder, TorchFrozenPass
from .losses import OOD_LABEL, VOID_LABEL, ClosedSetTargets, corocl_loss, rpl_losses

__all__ = ["TrainingOutput", "RPLTrainingModel", "build_network", "build_optimizer", "poly_schedule",
           "forward_losses"]


class TrainingOutput(NamedTuple):
    targets: ClosedSetTargets  # pseudo-labels and entropy of ỹ (the frozen closed-set network), without autograd
    rpl: torch.Tensor  # ŷ over the inlier classes (B, C, H, W)
    projected: torch.Tensor  # CoroCL embedding of the mixed images (B, C', h, w)
    context_projected: Optional[torch.Tensor]  # that of the context images; None without them


class RPLTrainingModel(nn.Module):
    """uint8 (B,H,W,3) RGB → the closed-set targets, ŷ and the projected embeddings, for training.

    The frozen share of the step (:mod:`rpl_training.frozen`: deep feature, head input, closed-set
    pseudo-labels and entropy, context images' deep feature) comes precomputed from the data
    loader (``frozen``, a batch's :data:`~rpl_training.frozen.FROZEN_KEYS`) or is computed here
    on the model's device. The projector (CoroCL, paper Fig. 6: one 1×1 conv to the head's input
    width) reads the branch's context feature; its output is bilinearly resized to the head's
    resolution, where the official code projects (1×1 and bilinear resizing commute, as in
    :class:`RPLBranch`).

    The context images of CoroCL only need the branch's embedding, so they go through the encoder
    and the branch's context block, never the decoder or the heads; the context block sees mixed
    and context images as one batch, as in the official code (its BatchNorm statistics are those
    of the whole batch). On a CPU the head input is stored channels-last: the frozen head's
    convolutions and the losses' channel reductions run faster on it (same values).
    """

    def __init__(self, network: RPLNetwork, projector: nn.Conv2d, mean: Sequence[float], std: Sequence[float], *,
                 num_inlier: int, compile_frozen: bool = False):
        super().__init__()
        if not network.has_branch:
            raise ValueError("RPLTrainingModel needs an RPLNetwork with a branch")
        self.network = network
        self.projector = projector
        self.num_inlier = int(num_inlier)
        self.frozen = TorchFrozenPass(FrozenClosedSet(network.closed_set, mean, std, num_inlier),
                                      FrozenEncoder(network.closed_set, mean, std), compile=compile_frozen)
        # (compiling the trainable part too was measured slower on the CPU: its backward kernels)

    def _project(self, embedding: torch.Tensor, input_hw) -> torch.Tensor:
        projected = self.projector(embedding)
        stride = getattr(self.network.closed_set, "head_stride", None)
        if stride:
            size = (-(-input_hw[0] // stride), -(-input_hw[1] // stride))
            projected = F.interpolate(projected, size, mode="bilinear", align_corners=True)
        return projected

    def forward(self, images: torch.Tensor, context: Optional[torch.Tensor] = None,
                frozen: Optional[Dict[str, torch.Tensor]] = None) -> TrainingOutput:
        seg, branch = self.network.closed_set, self.network.branch
        if frozen is None:
            frozen = self.frozen(images, context)
        deep, feat = frozen["deep"], frozen["feat"]
        if feat.device.type == "cpu":
            feat = feat.contiguous(memory_format=torch.channels_last)
        size = images.shape[1:3]
        if context is not None:
            deep = torch.cat([deep, frozen["context_deep"]])
        embedding = branch.embed(deep)
        n = images.shape[0]
        residual = branch.residual_from(embedding[:n], feat)
        rpl = seg.upsample_logits(seg.head(feat + residual)[:, : self.num_inlier], size)
        projected = self._project(embedding, size)
        targets = ClosedSetTargets(frozen["pseudo"], frozen["closed_entropy"])
        return TrainingOutput(targets, rpl, projected[:n], projected[n:] if context is not None else None)


#: provenance entries of a model file that describe its closed-set network (the rest describe its RPL
#: branch: rpl-train's training, make_default_model's evaluation / calibration / rpl_branch,
#: convert-checkpoint's rpl and variant)
SEGMENTER_PROVENANCE = ("segmenter", "source", "source_file", "source_sha256", "format")


def build_network(model_cfg: Dict[str, object]) -> Tuple[RPLNetwork, nn.Conv2d, CheckpointMeta]:
    """Frozen closed-set network from ``model.segmenter`` (a model file) + a fresh RPL branch + the CoroCL projector.

    Initialisation as the official code: the branch's context block starts as a copy of the
    segmenter's own context module where the architectures match (the registry's
    ``build_rpl_branch``); the branch's final 1×1 and the projector are Kaiming-normal (fan-in)
    with zero bias.
    """
    path = Path(model_cfg["segmenter"]) if model_cfg["segmenter"] else DEFAULT_CHECKPOINT
    frozen, meta = load_model(path, architecture=model_cfg["architecture"], with_branch=False)
    arch = get_architecture(meta.architecture)
    width = int(model_cfg["rpl_width"] or arch.default_rpl_width)
    design = model_cfg.get("rpl_design") or arch.rpl_designs[0]
    if design not in arch.rpl_designs:
        raise ValueError(f"model.rpl_design {design!r} is unknown for {arch.name}; known: {', '.join(arch.rpl_designs)}")
    closed_set = frozen.closed_set
    branch = arch.build_rpl_branch(closed_set, width, design, fine_channels=model_cfg.get("rpl_fine_channels"))
    fine_channels = getattr(branch, "fine_channels", None)  # recorded as built, the default included
    projector = nn.Conv2d(branch.context_channels, closed_set.head_channels, kernel_size=1, bias=True)
    init_kaiming_fan_in(projector)
    # the closed-set network's record only: what a model file says of its own RPL branch is not true
    # of the branch trained here
    provenance = {k: v for k, v in meta.provenance.items() if k in SEGMENTER_PROVENANCE}
    provenance.setdefault("source", str(path))
    meta = dataclasses.replace(meta, rpl_width=width, rpl_design=design,
                               rpl_fine_channels=fine_channels, score="rpl_energy", provenance=provenance)
    return RPLNetwork(closed_set, branch), projector, meta


def build_optimizer(network: RPLNetwork, projector: nn.Module, train_cfg: Dict[str, object]) -> torch.optim.Adam:
    """Adam: the branch's final 1×1 at ``residual_lr_factor`` × lr, everything else trained at lr."""
    residual = list(network.branch.residual.parameters())
    ids = {id(p) for p in residual}
    others = [p for p in list(network.branch.parameters()) + list(projector.parameters()) if id(p) not in ids]
    lr = float(train_cfg["lr"])
    return torch.optim.Adam([{"params": others, "lr": lr},
                             {"params": residual, "lr": lr * float(train_cfg["residual_lr_factor"])}],
                            lr=lr, weight_decay=float(train_cfg["weight_decay"]))


def poly_schedule(optimizer, total: int, power: float, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_i = lr_0 · (1 − i / total)^power at iteration i (the official ``WarmUpPolyLR``), after a
    linear warm-up over the first ``warmup`` iterations (0: none, as the official config)."""
    def factor(i: int) -> float:
        poly = max(0.0, 1.0 - i / total) ** power
        return poly * (i + 1) / warmup if i < warmup else poly
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def forward_losses(model: nn.Module, batch: Dict[str, torch.Tensor], *, use_corocl: bool,
                   train_cfg: Dict[str, object], generator: Optional[torch.Generator] = None,
                   amp: bool = False) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Forward one batch (tensors on the model's device) → (loss, detached terms).

    Only the inlier logit channels enter the losses, as they enter the score. The batch's
    :data:`~rpl_training.frozen.FROZEN_KEYS`, where the data loader computed them, are used as
    they are. With ``train.compile`` the loss terms run as one compiled function (same values).
    """
    images, labels = batch["image"], batch["label"].long()
    frozen = {k: batch[k] for k in (*FROZEN_KEYS, "context_deep") if k in batch} or None
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
        out = model(images, batch["context"] if use_corocl else None, frozen)
    terms = rpl_losses(out.rpl.float(), out.targets, labels, ood_label=OOD_LABEL, void_label=VOID_LABEL,
                       t=float(train_cfg["entropy_t"]), energy_weight=float(train_cfg["energy_weight"]),
                       compiled=bool(train_cfg["compile"]))
    corocl_cfg = train_cfg["corocl"]
    if use_corocl:
        with_objects = (labels == OOD_LABEL).flatten(1).any(dim=1)
        contrastive = corocl_loss(out.projected[with_objects].float(), labels[with_objects],
                                  out.context_projected[with_objects].float(),
                                  batch["context_label"][with_objects].long(),
                                  tau=float(corocl_cfg["tau"]), max_views=int(corocl_cfg["max_views"]),
                                  generator=generator)
    else:
        contrastive = torch.zeros((), device=images.device)
    loss = terms["total"] + float(corocl_cfg["weight"]) * contrastive
    detached = {k: v.detach() for k, v in terms.items()}
    detached["corocl"] = contrastive.detach()
    return loss, detached
