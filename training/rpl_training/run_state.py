"""A training run's state and its set-up: what :mod:`rpl_training.train`'s steps share.

:class:`RunState` holds the network, optimiser, schedule, RNG and bookkeeping that one iteration
hands to the next (and ``train_state.pt`` saves); :func:`setup_run` builds it for a new run or
restores it for ``--resume``; :func:`make_loader_for` gives the run's resumable sample stream.
"""

import dataclasses
import logging
import os
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, CheckpointMeta
from rpl_perception.eval.datasets import DatasetLayoutError

from .config import ConfigError, inlier_sources
from .distributed import DistContext, barrier
from .frozen import FrozenCollate, OnnxFrozenPass, export_frozen, onnxruntime_available
from .model import RPLTrainingModel, build_network, build_optimizer, poly_schedule
from .road_masks import RoadMasks
from .sample_stream import ConcatSources, IterationBatchSampler, build_dataset, collate, make_loader
from .utils import git_commit, read_log
from .validation import calibrate_on_batch, open_validation

__all__ = ["RunState", "STATE_FILE", "rng_state", "set_rng_state", "setup_run", "frozen_in_loader",
           "make_loader_for"]

log = logging.getLogger("rpl_training")

STATE_FILE = "train_state.pt"


@dataclasses.dataclass
class RunState:
    """What a run carries from one iteration to the next and its model files record; ``train_state.pt``
    restores it (the loop's reporting is :class:`rpl_training.train.TrainingLog`'s)."""

    cfg: dict
    ctx: DistContext
    out_dir: Path
    meta: CheckpointMeta
    network: nn.Module  # RPLNetwork
    projector: nn.Module
    model: nn.Module  # RPLTrainingModel, wrapped in DDP when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # CoroCL sampling
    total: int
    iterations_per_epoch: int
    provenance: dict
    iteration: int = 0  # iterations completed
    best: Optional[Dict[str, float]] = None  # the best validation so far: ap, fpr95, iteration
    calibration: Optional[tuple] = None  # ((low, high), threshold) of the rpl_energy score
    calibration_source: Optional[str] = None
    train_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)  # last logging window
    val_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)  # latest validation
    last_batch: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # calibration without validation

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def current_metrics(self) -> Dict[str, float]:
        best = {"best_ap": self.best["ap"]} if self.best is not None else {}
        return {**self.train_metrics, **{f"val_{k}": v for k, v in self.val_metrics.items()}, **best}

    def checkpoint_meta(self) -> CheckpointMeta:
        """The model file's metadata: calibration and provenance of this point of the run."""
        if self.calibration is None:
            self.calibration = calibrate_on_batch(self.network, self.meta, self.last_batch)
            self.calibration_source = "pasted objects of the last training batch"
        (low, high), threshold = self.calibration
        training = {**self.provenance, "iterations": self.iteration, "metrics": self.current_metrics(),
                    "calibration": f"rpl_energy display_range / anomaly_threshold from {self.calibration_source}"}
        return dataclasses.replace(
            self.meta, display_range={**self.meta.display_range, "rpl_energy": (low, high)},
            anomaly_threshold={**self.meta.anomaly_threshold, "rpl_energy": threshold},
            provenance={**self.meta.provenance, "training": training})


# ----------------------------------------------------------------------------- RNG state

def rng_state(run: RunState) -> Dict[str, Optional[torch.Tensor]]:
    cuda = run.device.type == "cuda"
    return {"torch": torch.get_rng_state(), "corocl": run.generator.get_state(),
            "cuda": torch.cuda.get_rng_state(run.device) if cuda else None}


def set_rng_state(run: RunState, state) -> None:
    torch.set_rng_state(state["torch"])
    run.generator.set_state(state["corocl"])
    if run.device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], run.device)


def prepare_road_masks(cfg, dataset, ctx: DistContext) -> RoadMasks:
    """The inlier frames' road masks for on-road pasting, prepared by the main process."""
    road = cfg["data"]["outlier"]["on_road"]
    sizes = [tuple(s["resize"]) if s["resize"] else None for s in inlier_sources(cfg["data"])]
    masks = RoadMasks(dataset.inliers, sizes, Path(cfg["model"]["segmenter"] or DEFAULT_CHECKPOINT),
                      Path(road["cache_dir"]), road["classes"])
    if ctx.is_main:
        computed = masks.prepare()
        log.info("road masks for on-road pasting: %s (%d computed now)", masks.folder, computed)
    barrier(ctx)
    return masks


def _open_data(cfg, meta: CheckpointMeta, seed: int, ctx: DistContext):
    """Training dataset and validation sets; every missing dataset reported in one error."""
    problems, dataset, sets = [], None, None
    try:
        dataset = build_dataset(cfg["data"], meta.mean, seed)
        if cfg["data"]["outlier"]["on_road"]["share"] > 0:
            dataset.road_masks = prepare_road_masks(cfg, dataset, ctx)
    except DatasetLayoutError as exc:
        problems.append(str(exc))
    val_cfg = cfg["validation"]
    try:
        sets = open_validation(val_cfg)
    except DatasetLayoutError as exc:
        problems.append(f"validation data ({val_cfg['kind'] if val_cfg['root'] else val_cfg['suite']}): {exc}")
    if problems:
        raise DatasetLayoutError("\n".join(problems))
    return dataset, sets


def _provenance(cfg, dataset) -> dict:
    out = cfg["data"]["outlier"]
    roots = out["root"] if isinstance(out["root"], list) else [out["root"]]
    sources = [{"kind": s["kind"], "root": str(Path(s["root"]).resolve()), "weight": s["weight"]}
               for s in inlier_sources(cfg["data"])]
    inlier = sources[0] if len(sources) == 1 else sources
    return {"data": {"inlier": inlier,
                     "outlier": {"kind": out["kind"], "filter": out["filter"],
                                 "root": str(Path(roots[0]).resolve()) if len(roots) == 1
                                 else [str(Path(r).resolve()) for r in roots]},
                     "inlier_images": len(dataset.inliers), "outlier_images": len(dataset.outliers)},
            "config": cfg, "git_commit": git_commit()}


def _validation_fpr95(out_dir: Path, iteration: int) -> Optional[float]:
    """The mean FPR95 of a run's validation at ``iteration`` (None where validation.csv lacks it)."""
    return next((row["fpr95"] for row in read_log(out_dir / "validation.csv")
                 if int(row["iteration"]) == iteration and "fpr95" in row), None)


def setup_run(cfg, ctx: DistContext, out_dir: Path, resume: bool):
    """Network, data, optimiser and schedule of a new run, or of the run resumed from ``train_state.pt``.

    Returns ``(run, dataset, validation sets)``.
    """
    train_cfg, seed = cfg["train"], int(cfg["seed"])
    torch.manual_seed(seed)  # the same initial weights in every process
    network, projector, meta = build_network(cfg["model"])
    divisor = network.size_divisor
    if any(side % divisor for side in cfg["data"]["crop_size"]):
        raise ConfigError(f"data.crop_size {cfg['data']['crop_size']} must be multiples of {divisor} "
                          f"for {meta.architecture}")
    dataset, sets = _open_data(cfg, meta, seed, ctx)

    batch_size = int(train_cfg["batch_size"])
    if batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size {batch_size} must be divisible by the {ctx.world_size} processes")
    iterations_per_epoch = len(dataset) // batch_size
    if iterations_per_epoch == 0:
        raise ConfigError(f"{len(dataset)} inlier images are fewer than one batch of {batch_size}")
    total = int(train_cfg["iterations"] or train_cfg["epochs"] * iterations_per_epoch)
    state = torch.load(out_dir / STATE_FILE, map_location="cpu", weights_only=True) if resume else None
    if state is not None:
        total = int(state["total"])  # the schedule of the run being resumed

    device = ctx.device
    if ctx.distributed and device.type == "cuda" and train_cfg["sync_bn"]:
        network.branch = nn.SyncBatchNorm.convert_sync_batchnorm(network.branch)
    threads = train_cfg["threads"]
    if threads is None and frozen_in_loader(cfg, ctx.device) is not None:
        # the loader's workers run the frozen pass on their cores: the step takes the rest, so
        # that no parallel region waits for a thread the workers have preempted
        threads = max(1, (os.cpu_count() or 1) - int(cfg["data"]["num_workers"]))
    if threads:
        torch.set_num_threads(int(threads))
    model = RPLTrainingModel(network, projector, meta.mean, meta.std, num_inlier=meta.num_inlier,
                             compile_frozen=bool(train_cfg["compile"])).to(device).train()
    optimizer = build_optimizer(network, projector, train_cfg)
    scheduler = poly_schedule(optimizer, total, float(train_cfg["lr_power"]), int(train_cfg["warmup_iterations"]))
    scaler = torch.amp.GradScaler(device.type, enabled=bool(train_cfg["amp"]) and device.type == "cuda")
    generator = torch.Generator().manual_seed(seed + ctx.rank)
    torch.manual_seed(seed + ctx.rank)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed + ctx.rank)
    ddp_model = model
    if ctx.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(train_cfg["corocl"]["enabled"]))
    run = RunState(cfg, ctx, out_dir, meta, network, projector, ddp_model, optimizer, scheduler, scaler, generator,
                   total, iterations_per_epoch, _provenance(cfg, dataset))
    if state is not None:
        network.branch.load_state_dict(state["branch"])
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved without AMP (a CPU run carried to a GPU): a fresh scaler
            scaler.load_state_dict(state["scaler"])
        run.iteration = int(state["iteration"])
        # states of older code: "best" without fpr95 (or an ap of None), no calibration or metrics
        best = state["best"] or {}  # None: no validation yet
        run.best = best if best.get("ap") is not None else None
        if run.best is not None and "fpr95" not in run.best:  # a state of older code: validation.csv has it
            run.best = {**run.best, "fpr95": _validation_fpr95(out_dir, run.best["iteration"])}
        if "calibration" in state:
            run.calibration, run.calibration_source = state["calibration"]["value"], state["calibration"]["source"]
            run.val_metrics = dict(state["val_metrics"])
        if state["world_size"] == ctx.world_size:
            set_rng_state(run, state["rng"][ctx.rank])
        else:
            log.warning("resuming with %d processes instead of %d: the data stream is unchanged, the CoroCL "
                        "sampling RNG restarts", ctx.world_size, state["world_size"])
        if state["config"] != cfg:
            changed = sorted(k for k in cfg if state["config"].get(k) != cfg[k])
            log.warning("resuming with a changed config (sections: %s)", ", ".join(changed))
    return run, dataset, sets


def frozen_in_loader(cfg, device: torch.device) -> Optional[str]:
    """The backend of the frozen pass when the data loader runs it (``train.frozen``), else None."""
    frozen = cfg["train"]["frozen"]
    workers = int(cfg["data"]["num_workers"])
    where = frozen["where"]
    if where == "auto":
        where = "loader" if device.type == "cpu" and workers >= 1 else "model"
    if where == "model":
        return None
    if device.type != "cpu":
        raise ConfigError("train.frozen.where: loader needs train.device cpu (the loader's batches live on the CPU)")
    backend = frozen["backend"]
    if backend == "auto":
        backend = "onnxruntime" if onnxruntime_available() else "torch"
    if backend == "onnxruntime" and not onnxruntime_available():
        raise ConfigError("train.frozen.backend onnxruntime: the onnxruntime package is not installed")
    return backend


def _frozen_collate(run: RunState, backend: str) -> FrozenCollate:
    base = run.model.module if isinstance(run.model, nn.parallel.DistributedDataParallel) else run.model
    frozen = base.frozen
    if backend == "onnxruntime":
        paths = export_frozen(frozen.closed_set, frozen.encoder, run.out_dir / "frozen", run.cfg["data"]["crop_size"])
        frozen = OnnxFrozenPass(paths, threads=1)
    log.info("the frozen closed-set network runs in the data loader (%s)", backend)
    return FrozenCollate(frozen, with_context=bool(run.cfg["train"]["corocl"]["enabled"]))


def make_loader_for(run: RunState, dataset):
    """The run's sample stream from its current iteration (every source weighted as configured); the
    frozen pass joins the loader's work where ``train.frozen`` says so."""
    cfg = run.cfg
    sources = dataset.inliers.ranges() if isinstance(dataset.inliers, ConcatSources) else None
    weights = [s["weight"] for s in inlier_sources(cfg["data"])] if sources else None
    sampler = IterationBatchSampler(len(dataset), int(cfg["train"]["batch_size"]), run.total, seed=int(cfg["seed"]),
                                    start=run.iteration, rank=run.ctx.rank, world_size=run.ctx.world_size,
                                    sources=sources, weights=weights)
    backend = frozen_in_loader(cfg, run.device)
    collate_fn = collate if backend is None else _frozen_collate(run, backend)
    return make_loader(dataset, sampler, int(cfg["data"]["num_workers"]), pin_memory=run.device.type == "cuda",
                       collate_fn=collate_fn)
