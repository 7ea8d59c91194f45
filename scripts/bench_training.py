#!/usr/bin/env python3
"""Training speed: samples per second of ``rpl-train`` on this machine, as a table.

Runs ``--iterations`` iterations of a training config (no validation, no checkpoints in between)
in a temporary folder, once per ``--set`` variant, and reports the median seconds per iteration
(the first ``--warmup`` windows excluded), samples per second and the CPU time per sample (the
process and its data loader workers). ``--baseline DIR`` also runs the first variant with the code
of another checkout (e.g. a ``git worktree`` of an older commit), in a subprocess, first, so that
old and new code are measured in one run on the same machine::

    git worktree add --detach ../base HEAD~3
    python scripts/bench_training.py --config training/rpl_training/configs/mixed_cpu.yaml \\
        --baseline ../base --variant "corocl" --variant "no corocl:train.corocl.enabled=false"
"""

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the data loader's workers)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def run_variant(config: Path, overrides, iterations: int, log_every: int):
    from rpl_training.config import load_config
    from rpl_training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [*overrides, f"output_dir={tmp}/run", f"train.iterations={iterations}",
                                   f"train.log_every={log_every}", f"train.checkpoint_every={iterations}",
                                   "validation.root=null", "validation.suite=null"])
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds() - cpu0
        # read here, not with rpl_training.utils.read_log: with --baseline this runs on an older
        # checkout's rpl_training, which may predate that reader
        with open(Path(tmp) / "run" / "metrics.csv", newline="") as fh:
            per_window = [float(r["seconds_per_iteration"]) for r in csv.DictReader(fh)]
    return per_window, wall, cpu, int(cfg["train"]["batch_size"])


def _baseline_rows(checkout: Path, args) -> list:
    """The first variant run by this script with ``checkout``'s code (its row as JSON)."""
    checkout = checkout.resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), str(checkout / "training")])}
    command = [sys.executable, str(Path(__file__).resolve()), "--config", str(args.config), "--iterations",
               str(args.iterations), "--window", str(args.window), "--warmup", str(args.warmup), "--json"]
    command += ["--variant", args.variant[0]] if args.variant else []
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, check=True, text=True)
    return [(f"{row[0]} (baseline)", *row[1:]) for row in json.loads(done.stdout.strip().splitlines()[-1])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--window", type=int, default=5, help="iterations per timing window")
    parser.add_argument("--warmup", type=int, default=1, help="windows left out of the median")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                        help="a named set of config overrides (repeatable); default: the config as it is")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the first variant with the code of this checkout (first row)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # rows for --baseline
    args = parser.parse_args(argv)
    variants = args.variant or ["config"]
    rows = _baseline_rows(args.baseline, args) if args.baseline else []
    for variant in variants:
        name, _, overrides = variant.partition(":")
        windows, wall, cpu, batch = run_variant(args.config, [o for o in overrides.split(",") if o],
                                                args.iterations, args.window)
        s_per_it = float(np.median(windows[args.warmup:] or windows))
        rows.append((name, batch, s_per_it, batch / s_per_it, cpu / (args.iterations * batch), wall))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"\n{args.iterations} iterations per variant, median over windows of {args.window} "
          f"(first {args.warmup} left out); CPU time: the process and its loader workers\n")
    reference = rows[0][2]
    print("| variant | batch | s / iteration | samples / s | speed-up | CPU s / sample | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, s_it, sps, cpu_per_sample, wall in rows:
        print(f"| {name} | {batch} | {s_it:.3f} | {sps:.2f} | {reference / s_it:.2f}× | {cpu_per_sample:.3f} | "
              f"{wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
