#!/usr/bin/env python3
"""Training speed: samples per second of ``rpl-train`` on this machine, as a table.

Runs ``--iterations`` iterations of a training config (no validation, no checkpoints in between)
in a temporary folder, once per ``--set`` variant, and reports the median seconds per iteration
(the first ``--warmup`` iterations excluded), samples per second and the process CPU time per
sample. Compare code versions by running the script from each checkout (``PYTHONPATH``)::

    python scripts/bench_training.py --config training/rpl_training/configs/mixed_cpu.yaml \\
        --variant "corocl" --variant "no corocl:train.corocl.enabled=false"
"""

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run_variant(config: Path, overrides, iterations: int, log_every: int):
    from rpl_training.config import load_config
    from rpl_training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [*overrides, f"output_dir={tmp}/run", f"train.iterations={iterations}",
                                   f"train.log_every={log_every}", f"train.checkpoint_every={iterations}",
                                   "validation.root=null", "validation.suite=null"])
        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        with open(Path(tmp) / "run" / "metrics.csv", newline="") as fh:
            per_window = [float(r["seconds_per_iteration"]) for r in csv.DictReader(fh)]
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return per_window, wall, cpu, int(cfg["train"]["batch_size"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--window", type=int, default=5, help="iterations per timing window")
    parser.add_argument("--warmup", type=int, default=1, help="windows left out of the median")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                        help="a named set of config overrides (repeatable); default: the config as it is")
    args = parser.parse_args(argv)
    variants = args.variant or ["config"]
    rows = []
    for variant in variants:
        name, _, overrides = variant.partition(":")
        windows, wall, cpu, batch = run_variant(args.config, [o for o in overrides.split(",") if o],
                                                args.iterations, args.window)
        s_per_it = float(np.median(windows[args.warmup:] or windows))
        rows.append((name, batch, s_per_it, batch / s_per_it, cpu / (args.iterations * batch), wall))
    print(f"\n{args.iterations} iterations per variant, median over windows of {args.window} "
          f"(first {args.warmup} left out); CPU time includes data loading in this process\n")
    print("| variant | batch | s / iteration | samples / s | CPU s / sample | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, batch, s_it, sps, cpu_per_sample, wall in rows:
        print(f"| {name} | {batch} | {s_it:.3f} | {sps:.2f} | {cpu_per_sample:.3f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
