#!/usr/bin/env python3
"""What an RPL branch design costs at inference: parameters and added milliseconds, as a table.

For each ``DESIGN:WIDTH`` (or ``aspp_fine:WIDTH:FINE_CHANNELS``) the embedded segmenter gets a fresh branch of that design, and the
whole network (segmenter + branch, both heads) is timed against the segmenter alone at the
network size (eager PyTorch on this machine's CPU, batch 1, the fastest of ``--rounds`` runs after
a warm-up, so that other load on the machine inflates the numbers as little as possible)::

    python scripts/bench_branches.py --designs pyramid:64 aspp:64 aspp:128 aspp:256
    python scripts/bench_branches.py --designs aspp:128 aspp_fine:128 aspp_fine:128:16 aspp_fine:128:8
"""

import argparse
import sys
import time

import torch

from rpl_perception.checkpoint import DEFAULT_CHECKPOINT, load_model
from rpl_perception.models import RPLNetwork, get_architecture


def fastest_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def parse_design(item: str):
    """``DESIGN:WIDTH[:FINE_CHANNELS]`` → (design, width, fine channels or None)."""
    parts = item.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"--designs: {item!r} is not DESIGN:WIDTH or DESIGN:WIDTH:FINE_CHANNELS")
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--designs", nargs="+", default=["pyramid:64", "aspp:64", "aspp:128", "aspp:256"])
    parser.add_argument("--size", default="1024x512", help="network input WxH")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    network, meta = load_model(DEFAULT_CHECKPOINT, with_branch=False)
    segmenter = network.closed_set
    arch = get_architecture(meta.architecture)
    x = torch.randn(1, 3, height, width)
    torch.manual_seed(0)
    with torch.inference_mode():
        base = fastest_ms(lambda: segmenter(x), args.rounds)
        rows = []
        for item in args.designs:
            design, branch_width, fine_channels = parse_design(item)
            branch = arch.build_rpl_branch(segmenter, branch_width, design, fine_channels=fine_channels).eval()
            whole = RPLNetwork(segmenter, branch).eval()
            ms = fastest_ms(lambda net=whole: net(x), args.rounds)
            fine = getattr(branch, "fine_channels", None)
            rows.append((design if fine is None else f"{design} (fine {fine})", branch_width,
                         sum(p.numel() for p in branch.parameters()), ms))
    print(f"\nnetwork input {width}x{height}, eager PyTorch on the CPU ({torch.get_num_threads()} threads), batch 1, "
          f"fastest of {args.rounds}; segmenter alone: {base:.1f} ms\n")
    print("| design | width | parameters | segmenter + branch ms | added ms |")
    print("|---|---:|---:|---:|---:|")
    for design, branch_width, params, ms in rows:
        print(f"| {design} | {branch_width} | {params:,} | {ms:.1f} | {ms - base:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
