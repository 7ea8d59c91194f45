"""``rpl-train --config FILE``: fit the RPL branch (and the CoroCL projector) on a frozen segmenter.

One process on a CPU or GPU, or several under torchrun (DDP)::

    rpl-train --config configs/udacity_coco_cpu.yaml
    torchrun --nproc_per_node 4 -m rpl_training.train --config configs/cityscapes_coco.yaml

Each iteration (as the official ``engine/trainer.py``): outlier-exposure batch → when every
process holds at least ``corocl.min_images`` images with pasted objects, the batch forwarded is
the mixed images followed by their context images, else the mixed images only → loss =
``rpl_losses(...)["total"]`` on the mixed images + ``corocl.weight`` · CoroCL on the images with
objects → Adam step → poly learning-rate step.

The output folder receives ``config.yaml``, ``metrics.csv`` (and ``validation.csv``, TensorBoard
events when the ``tensorboard`` package is installed), the runtime model files
``last.safetensors`` / ``best.safetensors`` (loadable by ``AnomalySegmenter.from_checkpoint``)
and ``train_state.pt`` for an exact ``--resume`` (weights, optimiser, schedule, AMP scaler, RNG
states; the data position is the iteration). Ctrl-C stops at the next iteration boundary and
saves both; a second Ctrl-C aborts.
"""

import argparse
import csv
import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, CheckpointMeta, load_model, save_checkpoint
from rpl_perception.eval.datasets import DatasetLayoutError, open_dataset
from rpl_perception.eval.metrics import PixelMetricAccumulator
from rpl_perception.calibration import calibrate
from rpl_perception.models import AnomalyModel, ImageNormalisation, RPLSegmenter, get_architecture
from rpl_perception.models.rpl import init_kaiming_fan_in
from rpl_perception.segmenter import AnomalySegmenter

from .config import ConfigError, load_config
from .data import IterationBatchSampler, build_dataset, make_loader
from .distributed import DistContext, all_gather_objects, all_reduce, barrier, cleanup_distributed, init_distributed
from .losses import OOD_LABEL, VOID_LABEL, corocl_loss, rpl_losses

__all__ = ["RPLTrainingModel", "TrainResult", "build_network", "build_optimizer", "poly_schedule",
           "forward_losses", "validate", "train", "main", "STATE_FILE", "LAST_CHECKPOINT", "BEST_CHECKPOINT"]

log = logging.getLogger("rpl_training")

STATE_FILE = "train_state.pt"
LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
TRAIN_FIELDS = ("iteration", "epoch", "lr", "loss", "ce", "reg", "energy", "corocl", "corocl_fraction",
                "skipped_reads", "seconds_per_iteration")
VALIDATION_FIELDS = ("iteration", "ap", "fpr95", "auroc", "best_ap")


# ----------------------------------------------------------------------------- model

class RPLTrainingModel(nn.Module):
    """uint8 (B,H,W,3) RGB → (ỹ, ŷ, projected embedding) for training.

    Normalises exactly as :meth:`rpl_perception.models.AnomalyModel.normalise` (x · 1/(255σ) − μ/σ).
    The projector (CoroCL, paper Fig. 6: one 1×1 conv to the head's input width) reads the
    branch's context feature; its output is bilinearly resized to the head's resolution, where the
    official code projects (1×1 and bilinear resizing commute, as in :class:`RPLBranch`).
    """

    def __init__(self, network: RPLSegmenter, projector: nn.Conv2d, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if not network.has_branch:
            raise ValueError("RPLTrainingModel needs an RPLSegmenter with a branch")
        self.network = network
        self.projector = projector
        self.normalise = ImageNormalisation(mean, std)

    def forward(self, images: torch.Tensor):
        x = self.normalise(images)
        out = self.network(x)
        projected = self.projector(out.embedding)
        stride = getattr(self.network.segmenter, "head_stride", None)
        if stride:
            size = (-(-x.shape[-2] // stride), -(-x.shape[-1] // stride))
            projected = F.interpolate(projected, size, mode="bilinear", align_corners=True)
        return out.closed, out.rpl, projected


def build_network(model_cfg: Dict[str, object]) -> Tuple[RPLSegmenter, nn.Conv2d, CheckpointMeta]:
    """Frozen segmenter from ``model.segmenter`` + a fresh RPL branch + the CoroCL projector.

    Initialisation as the official code: the branch's context block starts as a copy of the
    segmenter's own context module where the architectures match (the registry's
    ``build_rpl_branch``); the branch's final 1×1 and the projector are Kaiming-normal (fan-in)
    with zero bias.
    """
    path = Path(model_cfg["segmenter"]) if model_cfg["segmenter"] else DEFAULT_CHECKPOINT
    frozen, meta = load_model(path, architecture=model_cfg["architecture"], with_branch=False)
    arch = get_architecture(meta.architecture)
    width = int(model_cfg["rpl_width"] or arch.default_rpl_width)
    segmenter = frozen.segmenter
    branch = arch.build_rpl_branch(segmenter, width)
    projector = nn.Conv2d(branch.context_channels, segmenter.head_channels, kernel_size=1, bias=True)
    init_kaiming_fan_in(projector)
    meta = dataclasses.replace(meta, rpl_width=width, score="rpl_energy")
    if "source" not in meta.provenance:
        meta.provenance = {**meta.provenance, "source": str(path)}
    return RPLSegmenter(segmenter, branch), projector, meta


def build_optimizer(network: RPLSegmenter, projector: nn.Module, train_cfg: Dict[str, object]) -> torch.optim.Adam:
    """Adam: the branch's final 1×1 at ``residual_lr_factor`` × lr, everything else trained at lr."""
    residual = list(network.branch.residual.parameters())
    ids = {id(p) for p in residual}
    others = [p for p in list(network.branch.parameters()) + list(projector.parameters()) if id(p) not in ids]
    lr = float(train_cfg["lr"])
    return torch.optim.Adam([{"params": others, "lr": lr},
                             {"params": residual, "lr": lr * float(train_cfg["residual_lr_factor"])}],
                            lr=lr, weight_decay=float(train_cfg["weight_decay"]))


def poly_schedule(optimizer, total: int, power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_i = lr_0 · (1 − i / total)^power at iteration i (the official ``WarmUpPolyLR``, no warm-up)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1.0 - i / total) ** power)


# ----------------------------------------------------------------------------- one step

def forward_losses(model: nn.Module, batch: Dict[str, torch.Tensor], *, use_corocl: bool, num_inlier: int,
                   train_cfg: Dict[str, object], generator: Optional[torch.Generator] = None,
                   amp: bool = False) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Forward one batch (tensors on the model's device) → (loss, detached terms).

    Only the first ``num_inlier`` logit channels enter the losses, as they enter the score.
    """
    images, labels = batch["image"], batch["label"].long()
    n = images.shape[0]
    inputs = torch.cat([images, batch["context"]]) if use_corocl else images
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
        closed, rpl, projected = model(inputs)
    closed, rpl = closed[:n, :num_inlier].float(), rpl[:n, :num_inlier].float()
    terms = rpl_losses(rpl, closed, labels, ood_label=OOD_LABEL, void_label=VOID_LABEL,
                       t=float(train_cfg["entropy_t"]), energy_weight=float(train_cfg["energy_weight"]))
    corocl_cfg = train_cfg["corocl"]
    if use_corocl:
        with_objects = (labels == OOD_LABEL).flatten(1).any(dim=1)
        contrastive = corocl_loss(projected[:n][with_objects].float(), labels[with_objects],
                                  projected[n:][with_objects].float(), batch["context_label"][with_objects].long(),
                                  tau=float(corocl_cfg["tau"]), max_views=int(corocl_cfg["max_views"]),
                                  generator=generator)
    else:
        contrastive = torch.zeros((), device=images.device)
    loss = terms["total"] + float(corocl_cfg["weight"]) * contrastive
    detached = {k: v.detach() for k, v in terms.items()}
    detached["corocl"] = contrastive.detach()
    return loss, detached


# ----------------------------------------------------------------------------- evaluation

@contextmanager
def evaluating(model: nn.Module):
    """Eval mode and no autograd inside; back to train mode after."""
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train()


def validate(network: RPLSegmenter, meta: CheckpointMeta, dataset, *, device: torch.device,
             network_size=None, max_images: Optional[int] = None, show_progress: bool = True):
    """AP / FPR95 / AUROC of the ``rpl_energy`` score over an anomaly set (labels 0 in, 1 anomaly,
    else void), through :class:`AnomalySegmenter` exactly as at inference, and the score's
    calibration (display range, threshold) on the same pixels (every 4th row and column)."""
    segmenter = AnomalySegmenter(network, meta, score="rpl_energy", network_size=network_size, device=str(device))
    accumulator = PixelMetricAccumulator()
    sampled_scores, sampled_labels = [], []
    count = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    for index in tqdm(range(count), desc="validating", unit="img", leave=False, disable=not show_progress):
        try:
            sample = dataset[index]
        except OSError as exc:
            log.warning("validation: skipping unreadable sample %d (%s)", index, exc)
            continue
        anomaly = segmenter.predict(sample.image).anomaly
        accumulator.update(anomaly, sample.label)
        sampled_scores.append(anomaly[::4, ::4].ravel())
        sampled_labels.append(sample.label[::4, ::4].ravel())
    metrics = accumulator.compute()
    calibration = calibrate(np.concatenate(sampled_scores), np.concatenate(sampled_labels))
    return metrics, calibration


def calibrate_on_batch(network: RPLSegmenter, meta: CheckpointMeta, batch: Dict[str, torch.Tensor]):
    """Calibration from a training batch when no validation set is configured: pasted objects
    count as anomalies, every other non-void pixel as in-distribution."""
    model = AnomalyModel(network, num_inlier=meta.num_inlier, mean=meta.mean, std=meta.std,
                         score="rpl_energy", smoothing_sigma=meta.smoothing_sigma).to(batch["image"].device)
    with evaluating(network):
        _, anomaly = model(batch["image"])
    labels = batch["label"].cpu().numpy()
    labels = np.where(labels == OOD_LABEL, 1, np.where(labels == VOID_LABEL, VOID_LABEL, 0))
    return calibrate(anomaly.float().cpu().numpy().ravel(), labels.ravel())


# ----------------------------------------------------------------------------- bookkeeping

def git_commit() -> Optional[str]:
    """HEAD of the repository holding this file, with ``+dirty`` for uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class MetricsLog:
    """CSV files (always) and TensorBoard events (when the ``tensorboard`` package imports)."""

    def __init__(self, out_dir: Path, start_iteration: int):
        self.files = {"train": (out_dir / "metrics.csv", TRAIN_FIELDS),
                      "validation": (out_dir / "validation.csv", VALIDATION_FIELDS)}
        for path, fields in self.files.values():
            self._start_csv(path, fields, start_iteration)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_iteration or None)
        except ImportError:
            self.writer = None
            log.info("tensorboard is not installed: metrics go to CSV only (pip install tensorboard for event files)")

    @staticmethod
    def _start_csv(path: Path, fields, start_iteration: int) -> None:
        """Fresh file with a header; on resume keep only the rows up to the resumed iteration."""
        rows = []
        if start_iteration and path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= start_iteration]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, kind: str, values: Dict[str, float]) -> None:
        path, fields = self.files[kind]
        with path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields).writerow({k: values.get(k, "") for k in fields})
        if self.writer is not None:
            for key, value in values.items():
                if key not in ("iteration", "epoch") and value is not None:
                    self.writer.add_scalar(f"{kind}/{key}", value, values["iteration"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM set a flag the loop checks at iteration boundaries; a second
    signal aborts at once. Handlers are installed only in the main thread and restored on exit."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, _frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: stopping after this iteration and saving (send it again to abort)",
                    signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@dataclasses.dataclass
class TrainResult:
    iteration: int  # iterations completed
    total_iterations: int
    interrupted: bool
    output_dir: Path
    last_checkpoint: Optional[Path]
    best_checkpoint: Optional[Path]
    best_ap: Optional[float]
    last_metrics: Dict[str, float]


def _rng_state(ctx: DistContext, generator: torch.Generator) -> Dict[str, Optional[torch.Tensor]]:
    return {"torch": torch.get_rng_state(), "corocl": generator.get_state(),
            "cuda": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None}


def _set_rng_state(state, ctx: DistContext, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["corocl"])
    if ctx.device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], ctx.device)


# ----------------------------------------------------------------------------- the loop

def train(cfg: Dict[str, object], *, resume: bool = False, stop_after: Optional[int] = None) -> TrainResult:
    """Train as ``cfg`` (from :func:`rpl_training.config.load_config`) says; see the module docstring.

    ``resume`` continues the run in ``cfg["output_dir"]`` exactly where its ``train_state.pt``
    left it. ``stop_after`` ends this session after that many iterations, saving as on Ctrl-C
    (for time-sliced jobs). Under torchrun every process calls this.
    """
    ctx = init_distributed(cfg["train"]["device"])
    try:
        return _train(cfg, ctx, resume=resume, stop_after=stop_after)
    finally:
        cleanup_distributed(ctx)


def _train(cfg, ctx: DistContext, *, resume: bool, stop_after: Optional[int]) -> TrainResult:
    out_dir = Path(cfg["output_dir"])
    state_path = out_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise ConfigError(f"--resume: no {STATE_FILE} in {out_dir} to resume from")
    if not resume and state_path.exists():
        raise ConfigError(f"{out_dir} already holds a training run ({STATE_FILE}); pass --resume to continue "
                          "it or choose another output_dir")
    file_handler, level = None, log.level
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(out_dir / "train.log")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(file_handler)
        if level == logging.NOTSET:
            log.setLevel(logging.INFO)  # the run's log file records progress whatever the root level
    try:
        return _run(cfg, ctx, out_dir, state_path, resume, stop_after)
    finally:
        if file_handler is not None:
            log.removeHandler(file_handler)
            file_handler.close()
            log.setLevel(level)


def _run(cfg, ctx: DistContext, out_dir: Path, state_path: Path, resume: bool, stop_after: Optional[int]):
    train_cfg, val_cfg, seed = cfg["train"], cfg["validation"], int(cfg["seed"])

    torch.manual_seed(seed)  # the same initial weights in every process
    network, projector, meta = build_network(cfg["model"])
    divisor = getattr(network.segmenter, "size_divisor", 1)
    if any(side % divisor for side in cfg["data"]["crop_size"]):
        raise ConfigError(f"data.crop_size {cfg['data']['crop_size']} must be multiples of {divisor} "
                          f"for {meta.architecture}")
    problems = []  # every missing dataset in one error
    try:
        dataset = build_dataset(cfg["data"], meta.mean, seed)
    except DatasetLayoutError as exc:
        problems.append(str(exc))
    try:
        val_set = open_dataset(val_cfg["kind"], val_cfg["root"]) if val_cfg["root"] else None
    except DatasetLayoutError as exc:
        problems.append(f"validation data ({val_cfg['kind']}): {exc}")
    if problems:
        raise DatasetLayoutError("\n".join(problems))

    batch_size = int(train_cfg["batch_size"])
    if batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size {batch_size} must be divisible by the {ctx.world_size} processes")
    iterations_per_epoch = len(dataset) // batch_size
    if iterations_per_epoch == 0:
        raise ConfigError(f"{len(dataset)} inlier images are fewer than one batch of {batch_size}")
    total = int(train_cfg["iterations"] or train_cfg["epochs"] * iterations_per_epoch)

    state = torch.load(state_path, map_location="cpu", weights_only=True) if resume else None
    if state is not None:
        total = int(state["total"])  # the schedule of the run being resumed

    device = ctx.device
    use_amp = bool(train_cfg["amp"]) and device.type == "cuda"
    if ctx.distributed and device.type == "cuda" and train_cfg["sync_bn"]:
        network.branch = nn.SyncBatchNorm.convert_sync_batchnorm(network.branch)
    model = RPLTrainingModel(network, projector, meta.mean, meta.std).to(device).train()
    optimizer = build_optimizer(network, projector, train_cfg)
    scheduler = poly_schedule(optimizer, total, float(train_cfg["lr_power"]))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    generator = torch.Generator().manual_seed(seed + ctx.rank)  # CoroCL sampling
    torch.manual_seed(seed + ctx.rank)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed + ctx.rank)

    start, best = 0, {"ap": None, "iteration": None}
    if state is not None:
        network.branch.load_state_dict(state["branch"])
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, best = int(state["iteration"]), dict(state["best"])
        if state["world_size"] == ctx.world_size:
            _set_rng_state(state["rng"][ctx.rank], ctx, generator)
        else:
            log.warning("resuming with %d processes instead of %d: the data stream is unchanged, the CoroCL "
                        "sampling RNG restarts", ctx.world_size, state["world_size"])
        if state["config"] != cfg:
            changed = sorted(k for k in cfg if state["config"].get(k) != cfg[k])
            log.warning("resuming with a changed config (sections: %s)", ", ".join(changed))

    ddp_model = model
    if ctx.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(train_cfg["corocl"]["enabled"]))

    sampler = IterationBatchSampler(len(dataset), batch_size, total, seed=seed, start=start,
                                    rank=ctx.rank, world_size=ctx.world_size)
    loader = make_loader(dataset, sampler, int(cfg["data"]["num_workers"]), pin_memory=device.type == "cuda")
    metrics_log = MetricsLog(out_dir, start) if ctx.is_main else None
    if ctx.is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        log.info("training %s + RPL branch (width %d) for %d iterations (%d per epoch, batch %d over %d "
                 "process(es) on %s)%s", meta.architecture, meta.rpl_width, total, iterations_per_epoch,
                 batch_size, ctx.world_size, device, f", resuming at {start}" if start else "")

    provenance = {
        "data": {"inlier": {"kind": cfg["data"]["inlier"]["kind"],
                            "root": str(Path(cfg["data"]["inlier"]["root"]).resolve())},
                 "outlier": {"kind": cfg["data"]["outlier"]["kind"], "filter": cfg["data"]["outlier"]["filter"],
                             "root": str(Path(cfg["data"]["outlier"]["root"]).resolve())},
                 "inlier_images": len(dataset.inliers), "outlier_images": len(dataset.outliers)},
        "config": cfg, "git_commit": git_commit(),
    }
    calibration = {"value": None, "source": None}
    last_batch: Dict[str, torch.Tensor] = {}
    train_metrics: Dict[str, float] = {}  # means over the last logging window
    val_metrics: Dict[str, float] = {}  # the latest validation

    def current_metrics() -> Dict[str, float]:
        best_ap = {"best_ap": best["ap"]} if best["ap"] is not None else {}
        return {**train_metrics, **{f"val_{k}": v for k, v in val_metrics.items()}, **best_ap}

    def checkpoint_meta(iteration: int, metrics: Dict[str, float]) -> CheckpointMeta:
        if calibration["value"] is None:
            calibration["value"] = calibrate_on_batch(network, meta, last_batch)
            calibration["source"] = "pasted objects of the last training batch"
        (low, high), threshold = calibration["value"]
        training = {**provenance, "iterations": iteration, "metrics": metrics,
                    "calibration": f"rpl_energy display_range / anomaly_threshold from {calibration['source']}"}
        return dataclasses.replace(
            meta, display_range={**meta.display_range, "rpl_energy": (low, high)},
            anomaly_threshold={**meta.anomaly_threshold, "rpl_energy": threshold},
            provenance={**meta.provenance, "training": training})

    def save(iteration: int) -> Path:
        """Runtime model (main process) + resumable state; every process takes part (RNG states)."""
        rng_states = all_gather_objects(_rng_state(ctx, generator), ctx)
        path = out_dir / LAST_CHECKPOINT
        if ctx.is_main:
            save_checkpoint(path, checkpoint_meta(iteration, current_metrics()), network, projector)
            state = {"iteration": iteration, "total": total, "world_size": ctx.world_size,
                     "data_position": {"epoch": iteration // iterations_per_epoch,
                                       "batch": iteration % iterations_per_epoch},
                     "branch": network.branch.state_dict(), "projector": projector.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rng_states, "best": best, "config": cfg}
            tmp = state_path.with_name(state_path.name + ".tmp")
            torch.save(state, tmp)
            tmp.replace(state_path)
        barrier(ctx)
        return path

    def run_validation(iteration: int) -> None:
        if ctx.is_main:
            metrics, calibration["value"] = validate(network, meta, val_set, device=device,
                                                     network_size=val_cfg["network_size"],
                                                     max_images=val_cfg["max_images"])
            calibration["source"] = f"validation set {val_cfg['root']}"
            model.train()
            improved = best["ap"] is None or metrics["ap"] > best["ap"]
            if improved:
                best.update(ap=metrics["ap"], iteration=iteration)
            val_metrics.clear()
            val_metrics.update(metrics)
            metrics_log.write("validation", {"iteration": iteration, **metrics, "best_ap": best["ap"]})
            log.info("iteration %d: AP %.4f FPR95 %.4f AUROC %.4f (best AP %.4f at %d)", iteration, metrics["ap"],
                     metrics["fpr95"], metrics["auroc"], best["ap"], best["iteration"])
            if improved:
                save_checkpoint(out_dir / BEST_CHECKPOINT, checkpoint_meta(iteration, current_metrics()),
                                network, projector)
        barrier(ctx)

    warned: set = set()
    skipped_reads = 0
    window = torch.zeros(6, dtype=torch.float64, device=device)
    window_count, window_seconds = 0, 0.0

    def log_window() -> None:
        """Means of the loss terms over the window and all processes → CSV / TensorBoard / progress bar."""
        nonlocal window_count, window_seconds
        sums = all_reduce(torch.cat([window, torch.tensor([window_count, skipped_reads], dtype=torch.float64,
                                                           device=device)]), ctx)
        train_metrics.clear()
        train_metrics.update(zip(("loss", "ce", "reg", "energy", "corocl", "corocl_fraction"),
                                 (sums[:6] / sums[6]).tolist()))
        if ctx.is_main:
            metrics_log.write("train", {"iteration": completed, "epoch": completed / iterations_per_epoch,
                                        "lr": optimizer.param_groups[0]["lr"], **train_metrics,
                                        "skipped_reads": int(sums[7]),
                                        "seconds_per_iteration": window_seconds / window_count})
            progress.set_postfix(loss=f"{train_metrics['loss']:.4f}", corocl=f"{train_metrics['corocl']:.3f}")
        window.zero_()
        window_count, window_seconds = 0, 0.0
    completed, interrupted, validated_at = start, False, None
    progress = tqdm(total=total, initial=start, desc="rpl-train", unit="it", dynamic_ncols=True, disable=not ctx.is_main)
    with StopRequest() as stop, logging_redirect_tqdm():
        batches = iter(loader)
        for iteration in range(start, total):
            if stop_after is not None and iteration - start >= stop_after:
                interrupted = True
                break
            step_start = time.perf_counter()
            batch = next(batches)
            for name in batch.pop("skipped"):
                skipped_reads += 1
                if name not in warned:
                    warned.add(name)
                    log.warning("skipping unreadable file: %s", name)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with_objects = int((batch["label"] == OOD_LABEL).flatten(1).any(dim=1).sum())
            flags = all_reduce(torch.tensor([float(stop.requested), -with_objects], device=device), ctx,
                               op=torch.distributed.ReduceOp.MAX)
            if flags[0] > 0:
                interrupted = True
                break
            use_corocl = bool(train_cfg["corocl"]["enabled"]) and -flags[1].item() >= train_cfg["corocl"]["min_images"]

            optimizer.zero_grad(set_to_none=True)
            loss, terms = forward_losses(ddp_model, batch, use_corocl=use_corocl, num_inlier=meta.num_inlier,
                                         train_cfg=train_cfg, generator=generator, amp=use_amp)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            completed = iteration + 1
            last_batch = {k: batch[k][:2] for k in ("image", "label")}
            window += torch.stack([loss.detach(), terms["ce"], terms["reg"], terms["energy"], terms["corocl"],
                                   torch.tensor(float(use_corocl), device=device)]).double()
            window_count += 1
            window_seconds += time.perf_counter() - step_start
            progress.update(1)

            if completed % int(train_cfg["log_every"]) == 0 or completed == total:
                log_window()
            if val_set is not None and completed % int(val_cfg["every"]) == 0:
                run_validation(completed)
                validated_at = completed
            if completed % int(train_cfg["checkpoint_every"]) == 0 and completed != total:
                save(completed)
        progress.close()
        if window_count:  # stopped inside a logging window
            log_window()
        if val_set is not None and not interrupted and validated_at != completed and completed > start:
            run_validation(completed)
        if completed > start:
            save(completed)
    if metrics_log is not None:
        metrics_log.close()
    if ctx.is_main:
        log.info("%s at iteration %d/%d; model: %s%s", "stopped" if interrupted else "finished", completed, total,
                 out_dir / LAST_CHECKPOINT, f", best AP {best['ap']:.4f} at {best['iteration']}" if best["ap"] is not None else "")
    last_path, best_path = out_dir / LAST_CHECKPOINT, out_dir / BEST_CHECKPOINT
    return TrainResult(completed, total, interrupted, out_dir, last_path if last_path.exists() else None,
                       best_path if best_path.exists() else None, best["ap"], current_metrics())


# ----------------------------------------------------------------------------- command line

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rpl-train", description="Train the RPL branch (and CoroCL projector) on a frozen segmenter.",
        epilog="Several GPUs: torchrun --nproc_per_node N -m rpl_training.train --config FILE")
    parser.add_argument("--config", type=Path, required=True, help="YAML config (see rpl_training/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.iterations=100 (repeatable)")
    parser.add_argument("--output-dir", type=Path, help="overrides output_dir")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides train.device")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder exactly")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="stop (and save, as on Ctrl-C) after N iterations of this session")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    try:
        cfg = load_config(args.config, overrides)
        result = train(cfg, resume=args.resume, stop_after=args.stop_after)
    except (ConfigError, DatasetLayoutError) as exc:
        print(f"rpl-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rpl-train: aborted", file=sys.stderr)
        return 130
    return 130 if result.interrupted and args.stop_after is None else 0


if __name__ == "__main__":
    sys.exit(main())
