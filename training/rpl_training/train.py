"""``rpl-train --config FILE``: fit the RPL branch (and the CoroCL projector) on a frozen closed-set network.

One process on a CPU or GPU, or several under torchrun (DDP)::

    rpl-train --config configs/udacity_coco_cpu.yaml
    torchrun --nproc_per_node 4 -m rpl_training.train --config configs/cityscapes_coco.yaml

Each iteration (as the official ``engine/trainer.py``): outlier-exposure batch → when every
process holds at least ``corocl.min_images`` images with pasted objects, the mixed images and
their context images are forwarded, else the mixed images only → loss =
``rpl_losses(...)["total"]`` on the mixed images + ``corocl.weight`` · CoroCL on the images with
objects → Adam step → poly learning-rate step.

In the style of torchvision's ``references/segmentation``: :func:`train_iterations` runs the
iterations up to the next validation or checkpoint, :func:`evaluate` returns the validation
metrics and its caller keeps the best model, :func:`save` writes the model and the resumable
state; :class:`~rpl_training.run_state.RunState` (built by :func:`~rpl_training.run_state.setup_run`)
is what a run carries between iterations and what ``train_state.pt`` restores, :class:`TrainingLog`
what the loop only reports (window sums, metrics files, progress bar).

The output folder receives ``config.yaml``, ``metrics.csv`` (and ``validation.csv``, TensorBoard
events when the ``tensorboard`` package is installed), the runtime model files
``last.safetensors`` / ``best.safetensors`` (loadable by ``AnomalySegmenter.from_checkpoint``)
and ``train_state.pt`` for an exact ``--resume`` (weights, optimiser, schedule, AMP scaler, RNG
states; the data position is the iteration). Ctrl-C stops at the next iteration boundary and
saves both; a second Ctrl-C aborts.
"""

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set

import torch
import yaml
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from rpl_perception.checkpoint import save_checkpoint
from rpl_perception.eval.datasets import DatasetLayoutError

from .config import ConfigError, load_config
from .distributed import all_gather_objects, all_reduce, barrier, cleanup_distributed, init_distributed
from .losses import OOD_LABEL
from .model import RPLTrainingModel, build_network, build_optimizer, forward_losses, poly_schedule
from .run_state import STATE_FILE, RunState, make_loader_for, rng_state, setup_run
from .selection import beats
from .utils import VALIDATION_FIELDS, MetricsLog, StopRequest
from .validation import ValidationSets, describe, validate

__all__ = ["RPLTrainingModel", "RunState", "TrainResult", "build_network", "build_optimizer", "poly_schedule",
           "forward_losses", "validate", "TrainingLog", "train_iterations", "evaluate", "validate_and_keep_best", "save", "train", "main", "STATE_FILE",
           "LAST_CHECKPOINT", "BEST_CHECKPOINT", "KEPT_CHECKPOINTS"]

log = logging.getLogger("rpl_training")

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
KEPT_CHECKPOINTS = "checkpoints"  # the model file of every validation, for rules applied afterwards
#: the loss terms a logging window averages (metrics.csv columns)
WINDOW_TERMS = ("loss", "ce", "reg", "energy", "corocl", "corocl_fraction", "on_road_fraction")


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


# ----------------------------------------------------------------------------- the steps

@dataclasses.dataclass
class TrainingLog:
    """What the loop reports and nothing resumes: the logging window's sums of ``WINDOW_TERMS``,
    unreadable files, the metrics files (main process) and the progress bar."""

    sums: torch.Tensor
    progress: tqdm
    metrics_log: Optional[MetricsLog] = None
    count: int = 0  # iterations in the window
    seconds: float = 0.0
    skipped_reads: int = 0
    warned: Set[str] = dataclasses.field(default_factory=set)

    def skipped(self, names) -> None:
        for name in names:
            self.skipped_reads += 1
            if name not in self.warned:
                self.warned.add(name)
                log.warning("skipping unreadable file: %s", name)


def log_window(run: RunState, window: TrainingLog) -> None:
    """Means of the loss terms over the window and all processes → CSV / TensorBoard / progress bar."""
    counts = torch.tensor([window.count, window.skipped_reads], dtype=torch.float64, device=run.device)
    sums = all_reduce(torch.cat([window.sums, counts]), run.ctx)
    terms = len(WINDOW_TERMS)
    run.train_metrics = dict(zip(WINDOW_TERMS, (sums[:terms] / sums[terms]).tolist()))
    if run.ctx.is_main:
        window.metrics_log.write("train", {"iteration": run.iteration,
                                           "epoch": run.iteration / run.iterations_per_epoch,
                                           "lr": run.optimizer.param_groups[0]["lr"], **run.train_metrics,
                                           "skipped_reads": int(sums[terms + 1]),
                                           "seconds_per_iteration": window.seconds / window.count})
        window.progress.set_postfix(loss=f"{run.train_metrics['loss']:.4f}",
                                    corocl=f"{run.train_metrics['corocl']:.3f}")
    window.sums.zero_()
    window.count, window.seconds = 0, 0.0


def train_iterations(run: RunState, batches, end: int, stop: StopRequest, window: TrainingLog) -> bool:
    """Iterations ``run.iteration … end − 1`` (up to the next validation or checkpoint). Returns
    True when a stop was requested (the last batch is dropped)."""
    train_cfg = run.cfg["train"]
    corocl_cfg = train_cfg["corocl"]
    use_amp = bool(train_cfg["amp"]) and run.device.type == "cuda"
    while run.iteration < end:
        step_start = time.perf_counter()
        batch = next(batches)
        window.skipped(batch.pop("skipped"))
        on_road = batch.pop("on_road").double().mean()  # the share of objects that stand on the road
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        with_objects = int((batch["label"] == OOD_LABEL).flatten(1).any(dim=1).sum())
        flags = all_reduce(torch.tensor([float(stop.requested), -with_objects], device=run.device), run.ctx,
                           op=torch.distributed.ReduceOp.MAX)
        if flags[0] > 0:
            return True
        use_corocl = bool(corocl_cfg["enabled"]) and -flags[1].item() >= corocl_cfg["min_images"]

        run.optimizer.zero_grad(set_to_none=True)
        loss, terms = forward_losses(run.model, batch, use_corocl=use_corocl, train_cfg=train_cfg,
                                     generator=run.generator, amp=use_amp)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        run.iteration += 1
        run.last_batch = {k: batch[k][:2] for k in ("image", "label")}
        window.sums += torch.stack([loss.detach(), terms["ce"], terms["reg"], terms["energy"], terms["corocl"],
                                    torch.tensor(float(use_corocl), device=run.device),
                                    on_road.to(run.device)]).double()
        window.count += 1
        window.seconds += time.perf_counter() - step_start
        window.progress.update(1)
        if run.iteration % int(train_cfg["log_every"]) == 0 or run.iteration == run.total:
            log_window(run, window)
    return False


def evaluate(run: RunState, sets: ValidationSets) -> Optional[Dict[str, float]]:
    """The validation metrics (main process; None in the others). Also the rpl_energy calibration
    that the run's next model file records."""
    if not run.ctx.is_main:
        return None
    val_cfg = run.cfg["validation"]
    metrics, run.calibration = validate(run.network, run.meta, sets, device=run.device,
                                        network_size=val_cfg["network_size"], max_images=val_cfg["max_images"])
    run.calibration_source = f"validation set {val_cfg['root'] or val_cfg['suite']}"
    run.model.train()
    return metrics


def validate_and_keep_best(run: RunState, sets: ValidationSets, window: TrainingLog) -> None:
    """:func:`evaluate`, log it, keep its model file in ``checkpoints/`` (``validation.keep_checkpoints``)
    and make it ``best.safetensors`` when it beats the run's best (:func:`rpl_training.selection.beats`)."""
    metrics = evaluate(run, sets)
    if metrics is not None:
        improved = beats(metrics, run.best)
        if improved:
            run.best = {"ap": float(metrics["ap"]), "fpr95": float(metrics["fpr95"]), "iteration": run.iteration}
        run.val_metrics = dict(metrics)
        window.metrics_log.write("validation", {"iteration": run.iteration, **metrics, "best_ap": run.best["ap"]})
        log.info("iteration %d: %s (best AP %.4f at %d)", run.iteration, describe(metrics, [n for n, _ in sets.sets]),
                 run.best["ap"], run.best["iteration"])
        meta = run.checkpoint_meta()
        if run.cfg["validation"]["keep_checkpoints"]:
            kept = run.out_dir / KEPT_CHECKPOINTS / f"iteration_{run.iteration:06d}.safetensors"
            kept.parent.mkdir(exist_ok=True)
            save_checkpoint(kept, meta, run.network, run.projector)
        if improved:
            save_checkpoint(run.out_dir / BEST_CHECKPOINT, meta, run.network, run.projector)
    barrier(run.ctx)


def save(run: RunState) -> Path:
    """Runtime model (main process) + resumable state; every process takes part (RNG states)."""
    rng_states = all_gather_objects(rng_state(run), run.ctx)
    path = run.out_dir / LAST_CHECKPOINT
    if run.ctx.is_main:
        save_checkpoint(path, run.checkpoint_meta(), run.network, run.projector)
        state = {"iteration": run.iteration, "total": run.total, "world_size": run.ctx.world_size,
                 "data_position": {"epoch": run.iteration // run.iterations_per_epoch,
                                   "batch": run.iteration % run.iterations_per_epoch},
                 "branch": run.network.branch.state_dict(), "projector": run.projector.state_dict(),
                 "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "scaler": run.scaler.state_dict(), "rng": rng_states,
                 "best": run.best, "config": run.cfg,
                 # plain floats: train_state.pt is read back with weights_only
                 "calibration": {"value": _plain(run.calibration), "source": run.calibration_source},
                 "val_metrics": {k: float(v) for k, v in run.val_metrics.items()}}
        state_path = run.out_dir / STATE_FILE
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(state_path)
    barrier(run.ctx)
    return path


def _plain(calibration):
    if calibration is None:
        return None
    (low, high), threshold = calibration
    return (float(low), float(high)), float(threshold)


# ----------------------------------------------------------------------------- the loop

def train(cfg: Dict[str, object], *, resume: bool = False, stop_after: Optional[int] = None,
          time_budget_s: Optional[float] = None) -> TrainResult:
    """Train as ``cfg`` (from :func:`rpl_training.config.load_config`) says; see the module docstring.

    ``resume`` continues the run in ``cfg["output_dir"]`` exactly where its ``train_state.pt``
    left it. ``stop_after`` ends this session after that many iterations, ``time_budget_s`` at the
    first iteration boundary after that many seconds, saving as on Ctrl-C (for time-sliced jobs:
    resume them later). Under torchrun every process calls this.
    """
    ctx = init_distributed(cfg["train"]["device"])
    out_dir = Path(cfg["output_dir"])
    state_path = out_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise ConfigError(f"--resume: no {STATE_FILE} in {out_dir} to resume from")
    if not resume and state_path.exists():
        raise ConfigError(f"{out_dir} already holds a training run ({STATE_FILE}); pass --resume to continue "
                          "it or choose another output_dir")
    file_handler, level = None, log.level
    try:
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(out_dir / "train.log")
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(file_handler)
            if level == logging.NOTSET:
                log.setLevel(logging.INFO)  # the run's log file records progress whatever the root level
        deadline = None if time_budget_s is None else time.monotonic() + float(time_budget_s)
        run, dataset, sets = setup_run(cfg, ctx, out_dir, resume)
        return _train(run, dataset, sets, stop_after, deadline)
    finally:
        if file_handler is not None:
            log.removeHandler(file_handler)
            file_handler.close()
            log.setLevel(level)
        cleanup_distributed(ctx)


def _next_stop(iteration: int, every: Optional[int], total: int) -> int:
    return total if not every else min(total, (iteration // every + 1) * every)


def _train(run: RunState, dataset, sets: Optional[ValidationSets], stop_after: Optional[int],
           deadline: Optional[float]) -> TrainResult:
    cfg, ctx = run.cfg, run.ctx
    train_cfg, val_cfg = cfg["train"], cfg["validation"]
    start = run.iteration
    stop_at = run.total if stop_after is None else min(run.total, start + stop_after)
    metrics_log = None
    if ctx.is_main:
        metrics_log = MetricsLog(run.out_dir, start, sets.fields if sets is not None else VALIDATION_FIELDS)
        (run.out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        fine = "" if run.meta.rpl_fine_channels is None else f", fine path {run.meta.rpl_fine_channels}"
        log.info("training %s + RPL branch (%s, width %d%s) for %d iterations (%d per epoch, batch %d over %d "
                 "process(es) on %s)%s", run.meta.architecture, run.meta.rpl_design, run.meta.rpl_width, fine, run.total,
                 run.iterations_per_epoch, train_cfg["batch_size"], ctx.world_size, run.device,
                 f", resuming at {start}" if start else "")
    val_every = int(val_cfg["every"]) if sets is not None else None
    checkpoint_every = int(train_cfg["checkpoint_every"])
    batches = iter(make_loader_for(run, dataset))
    interrupted, validated_at = False, None
    window = TrainingLog(torch.zeros(len(WINDOW_TERMS), dtype=torch.float64, device=run.device),
                         tqdm(total=run.total, initial=start, desc="rpl-train", unit="it", dynamic_ncols=True,
                              disable=not ctx.is_main), metrics_log)
    with StopRequest(deadline) as stop, logging_redirect_tqdm():
        while run.iteration < stop_at:
            end = min(stop_at, _next_stop(run.iteration, val_every, run.total),
                      _next_stop(run.iteration, checkpoint_every, run.total))
            if train_iterations(run, batches, end, stop, window):
                interrupted = True
                break
            if val_every and run.iteration % val_every == 0:
                validate_and_keep_best(run, sets, window)
                validated_at = run.iteration
            if run.iteration % checkpoint_every == 0 and run.iteration != run.total:
                save(run)
        interrupted = interrupted or run.iteration < run.total
        window.progress.close()
        if window.count:  # stopped inside a logging window
            log_window(run, window)
        if sets is not None and not interrupted and validated_at != run.iteration and run.iteration > start:
            validate_and_keep_best(run, sets, window)
        if run.iteration > start:
            save(run)
    if metrics_log is not None:
        metrics_log.close()
    if ctx.is_main:
        best = f", best AP {run.best['ap']:.4f} at {run.best['iteration']}" if run.best is not None else ""
        log.info("%s at iteration %d/%d; model: %s%s", "stopped" if interrupted else "finished", run.iteration,
                 run.total, run.out_dir / LAST_CHECKPOINT, best)
    last_path, best_path = run.out_dir / LAST_CHECKPOINT, run.out_dir / BEST_CHECKPOINT
    return TrainResult(run.iteration, run.total, interrupted, run.out_dir, last_path if last_path.exists() else None,
                       best_path if best_path.exists() else None, run.best and run.best["ap"], run.current_metrics())


# ----------------------------------------------------------------------------- command line

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rpl-train", description="Train the RPL branch (and CoroCL projector) on a frozen closed-set network.",
        epilog="Several GPUs: torchrun --nproc_per_node N -m rpl_training.train --config FILE")
    parser.add_argument("--config", type=Path, required=True, help="YAML config (see rpl_training/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.iterations=100 (repeatable)")
    parser.add_argument("--output-dir", type=Path, help="overrides output_dir")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides train.device")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder exactly")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="stop (and save, as on Ctrl-C) after N iterations of this session")
    parser.add_argument("--time-budget", type=float, metavar="S",
                        help="stop (and save, as on Ctrl-C) at the first iteration boundary after S seconds")
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
        result = train(cfg, resume=args.resume, stop_after=args.stop_after, time_budget_s=args.time_budget)
    except (ConfigError, DatasetLayoutError) as exc:
        print(f"rpl-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rpl-train: aborted", file=sys.stderr)
        return 130
    planned = args.stop_after is not None or args.time_budget is not None
    return 130 if result.interrupted and not planned else 0


if __name__ == "__main__":
    sys.exit(main())
