#!/usr/bin/env python3
"""The long training recipe on a lent GPU machine in one call: train until a time budget, save,
validate, and copy the checkpoints, logs and curve into ``--out``.

    python scripts/train_gpu_long.py --out "$OUT"                  # a GPU: CUDA + AMP, ≤ 8 min in all
    python scripts/train_gpu_long.py --out "$OUT" --resume-from DIR  # continue a run brought back earlier
    python scripts/train_gpu_long.py --out /tmp/t --device cpu --set train.iterations=4 ...  # CPU smoke run

It runs ``rpl-train`` on ``--config`` (default ``training/rpl_training/configs/mixed_long.yaml``:
8,000 iterations of batch 8, half of the objects on the road) with ``train.device`` cuda,
``train.amp`` on, the frozen closed-set network on the GPU and ``data.num_workers`` from the machine's
cores, until ``--budget-s`` (default 390 s, counted from the start of the run's set-up: the road
masks of a fresh machine are part of it; the curve and the summary come on top). A run that is not
finished stops at an iteration boundary and saves ``train_state.pt`` (not validated at the stop: its
best is that of its last validation); the next call with ``--resume-from`` (the ``run/`` folder this
call wrote) continues it exactly, on this machine's paths. ``--out`` receives ``run/`` (config,
metrics.csv, validation.csv, train.log, last/best ``.safetensors``, train_state.pt, ``road_masks/`` so
that the next machine does not compute them again — they are named by the frames' paths below the data
root, so they serve wherever ``--data-root`` lies: what the next call needs, ≈ 25 MB), ``checkpoints/``
(the model file of each validation of this call), ``curves.png`` and ``summary.json``.

Data paths of the config that start with ``../shared/data`` are rewritten to ``--data-root``
(default: ``../shared/data``, or ``shared/data`` inside the repository where that exists). Needs
this repository's packages importable (``pip install -e . -e ./training``, or their dependencies
next to torch: numpy, opencv-python-headless, safetensors, pycocotools, pyyaml, tqdm, matplotlib);
``--deps DIR`` puts a folder of extra packages first on ``sys.path``. ``--road-masks DIR`` (e.g.
``runs/road_masks``, ≈ 11 MB, carried with the call) gives the first call the masks prepared on another
machine, so its budget goes to training.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("numpy", "torch", "cv2", "safetensors", "pycocotools", "yaml", "tqdm", "matplotlib")
RUN_FILES = ("config.yaml", "metrics.csv", "validation.csv", "train.log", "last.safetensors", "best.safetensors",
             "train_state.pt", "road_masks")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for run/, curves.png and summary.json")
    p.add_argument("--config", type=Path, default=REPO / "training/rpl_training/configs/mixed_long.yaml")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    p.add_argument("--budget-s", type=float, default=390.0, help="seconds of training before it stops and saves")
    p.add_argument("--resume-from", type=Path, help="a run/ folder an earlier call wrote: continue it")
    p.add_argument("--data-root", type=Path, help="where ../shared/data of the config lies on this machine")
    p.add_argument("--workers", type=int, help="data loader workers (default: cores - 2, at most 12)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="more config overrides (repeatable)")
    p.add_argument("--deps", type=Path, help="a folder of extra packages, put first on sys.path")
    p.add_argument("--road-masks", type=Path,
                   help="a road-mask cache prepared elsewhere (data.outlier.on_road.cache_dir, e.g. runs/road_masks)")
    return p.parse_args(argv)


def _check_imports():
    import importlib

    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"train_gpu_long: missing packages: {', '.join(missing)} (see --deps)")


def _data_root(arg):
    if arg is not None:
        return arg.resolve()
    inside = REPO / "shared" / "data"
    return inside if inside.is_dir() else (REPO.parent / "shared" / "data").resolve()


def _rewrite_paths(node, old: str, new: str):
    """Every string of a config that starts with ``old`` → ``new`` + the rest."""
    if isinstance(node, dict):
        return {k: _rewrite_paths(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_paths(v, old, new) for v in node]
    if isinstance(node, str) and node.startswith(old):
        return new + node[len(old):]
    return node


def build_config(args, run_dir: Path):
    import yaml

    from rpl_training.config import load_config

    workers = args.workers if args.workers is not None else max(1, min(12, (os.cpu_count() or 4) - 2))
    # no torch.compile: its minutes of compilation would eat a large part of one call's budget
    overrides = [f"train.device={args.device}", f"train.amp={'true' if args.device.startswith('cuda') else 'false'}",
                 f"data.num_workers={workers}", "train.threads=null", "train.compile=false", *args.overrides]
    cwd = Path.cwd()
    os.chdir(REPO)  # the config's relative paths are the repository root's
    try:
        cfg = load_config(args.config, overrides)
    finally:
        os.chdir(cwd)
    default_root, data_root = str((REPO.parent / "shared" / "data").resolve()), str(_data_root(args.data_root))
    cfg = _rewrite_paths(_rewrite_paths(cfg, default_root, data_root), "../shared/data", data_root)
    cfg["output_dir"] = str(run_dir)
    for key in ("suite", "root"):
        value = cfg["validation"][key]
        if value and not Path(value).is_absolute():
            cfg["validation"][key] = str(REPO / value)
    if cfg["validation"]["suite"]:  # its set roots are relative to the suite file: absolute, rewritten
        suite_path = Path(cfg["validation"]["suite"])
        suite = yaml.safe_load(suite_path.read_text())
        for entry in suite["sets"]:
            entry["root"] = str((suite_path.parent / entry["root"]).resolve())
        suite = _rewrite_paths(suite, default_root, data_root)
        cfg["validation"]["suite"] = str(run_dir.parent / "suite.yaml")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        Path(cfg["validation"]["suite"]).write_text(yaml.safe_dump(suite, sort_keys=False))
    road = cfg["data"]["outlier"]["on_road"]
    road["cache_dir"] = str(run_dir / "road_masks")  # inside run/: carried by --resume-from
    return cfg


#: config entries that say where and how a run executes, not what it learns: a resumed run takes them
#: from this call, everything else from its own config.yaml
MACHINE_KEYS = (("output_dir",), ("train", "device"), ("train", "amp"), ("train", "threads"), ("train", "compile"),
                ("data", "num_workers"),
                ("model", "segmenter"), ("data", "outlier", "root"), ("data", "outlier", "on_road", "cache_dir"),
                ("validation", "suite"), ("validation", "root"))


def for_this_machine(saved, fresh):
    """The resumed run's own config (``saved``) with the machine's entries of ``fresh``
    (:func:`build_config` of this call): its schedule and recipe, this call's paths and device."""
    from rpl_training.config import inlier_sources

    cfg = json.loads(json.dumps(saved))  # a deep copy
    for keys in MACHINE_KEYS:
        source, target = fresh, cfg
        for key in keys[:-1]:
            source, target = source[key], target[key]
        target[keys[-1]] = source[keys[-1]]
    ours, theirs = inlier_sources(cfg["data"]), inlier_sources(fresh["data"])
    if [s["kind"] for s in ours] != [s["kind"] for s in theirs]:
        raise SystemExit(f"train_gpu_long: --config lists other inlier sources ({[s['kind'] for s in theirs]}) "
                         f"than the run being resumed ({[s['kind'] for s in ours]})")
    for source, here in zip(ours, theirs):
        source["root"] = here["root"]
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.deps is not None:
        sys.path.insert(0, str(args.deps.resolve()))
    sys.path[:0] = [str(REPO), str(REPO / "training")]
    _check_imports()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("train_gpu_long: no CUDA device (use --device cpu for a smoke run)")
    from rpl_training.config import load_config
    from rpl_training.train import KEPT_CHECKPOINTS, train

    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = (args.out / "run").resolve()
    if args.resume_from is not None and args.resume_from.resolve() != run_dir:
        shutil.copytree(args.resume_from, run_dir, dirs_exist_ok=True)
    resume = (run_dir / "train_state.pt").is_file()
    if args.road_masks is not None:  # masks of the same segmenter and frames, computed on another machine
        if not args.road_masks.is_dir():
            raise SystemExit(f"train_gpu_long: --road-masks {args.road_masks} is not a folder")
        if any(args.road_masks.glob("*.png")):
            raise SystemExit(f"train_gpu_long: --road-masks {args.road_masks} holds masks itself: give the cache "
                             "folder above it (data.outlier.on_road.cache_dir, e.g. runs/road_masks)")
        if args.road_masks.resolve() != (run_dir / "road_masks").resolve():
            shutil.copytree(args.road_masks, run_dir / "road_masks", dirs_exist_ok=True)
    cfg = build_config(args, run_dir)
    if resume:  # the resumed run keeps its own schedule and recipe; only where it runs changes
        # load_config: a config.yaml of older code gets the keys added since from the defaults
        cfg = for_this_machine(load_config(run_dir / "config.yaml"), cfg)
    start = time.monotonic()
    result = train(cfg, resume=resume, time_budget_s=args.budget_s)
    seconds = time.monotonic() - start
    kept = run_dir / KEPT_CHECKPOINTS  # every validation's model file, beside run/: run/ stays small to carry
    if kept.is_dir():
        (args.out / KEPT_CHECKPOINTS).mkdir(exist_ok=True)
        for path in kept.iterdir():
            shutil.move(str(path), str(args.out / KEPT_CHECKPOINTS / path.name))
        kept.rmdir()
    # the plot runs apart (matplotlib stays out of the training process) with this call's import paths
    paths = [str(args.deps.resolve())] if args.deps is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [str(REPO), str(REPO / "training")]
                                                       + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    subprocess.run([sys.executable, str(REPO / "scripts" / "plot_training.py"), str(run_dir), "--out",
                    str(args.out / "curves.png")], check=False, env=env)
    summary = {"iteration": result.iteration, "total_iterations": result.total_iterations,
               "finished": not result.interrupted, "resumed": resume, "seconds": round(seconds, 1),
               "best_ap": result.best_ap, "last_metrics": result.last_metrics,
               "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "files": sorted(name for name in RUN_FILES if (run_dir / name).exists()),
               "curves": (args.out / "curves.png").is_file(),
               "checkpoints": sorted(p.name for p in (args.out / KEPT_CHECKPOINTS).glob("*.safetensors"))}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
