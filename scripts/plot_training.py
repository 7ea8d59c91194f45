#!/usr/bin/env python3
"""Training curves of one or more ``rpl-train`` runs: the loss terms over iterations (each term
as it enters the total: ce, reg, energy_weight × energy, corocl_weight × corocl) and the
validation AP per set, from each run's ``metrics.csv`` / ``validation.csv``; one PNG.

    python scripts/plot_training.py runs/mixed_cpu runs/mixed_cpu_rpl_only --out docs/figures/curves.png
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from rpl_training.utils import read_log  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    fig, (terms_ax, val_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    # one colour per run; the loss term / the validation set is told by the line style
    term_styles = {"ce": "-", "reg": ":", "energy": "--", "corocl": "-."}
    set_styles = ["--", ":", "-.", (0, (1, 3)), (0, (5, 1))]
    for index, run in enumerate(args.runs):
        colour = f"C{index % 10}"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        weights = {"ce": 1.0, "reg": 1.0, "energy": float(cfg["train"]["energy_weight"]),
                   "corocl": float(cfg["train"]["corocl"]["weight"])}
        rows = read_log(run / "metrics.csv")
        its = [r["iteration"] for r in rows]
        for term, weight in weights.items():
            values = [weight * r[term] for r in rows]
            if any(values):
                terms_ax.plot(its, values, color=colour, linestyle=term_styles[term],
                              label=f"{run.name}: {term}" + (f" × {weight:g}" if weight != 1 else ""))
        validation = read_log(run / "validation.csv")
        if validation:
            sets = [k[:-3] for k in validation[0] if k.endswith("_ap") and k != "best_ap"]
            x = [r["iteration"] for r in validation]
            val_ax.plot(x, [100 * r["ap"] for r in validation], color=colour, marker="o", linewidth=2.5,
                        label=f"{run.name}: mean")
            for set_index, name in enumerate(sets):
                val_ax.plot(x, [100 * r[f"{name}_ap"] for r in validation], color=colour, marker=".", linewidth=1,
                            linestyle=set_styles[set_index % len(set_styles)], label=f"{run.name}: {name}")
    terms_ax.set(xlabel="iteration", ylabel="loss term (as weighted in the total)", yscale="log",
                 title="loss terms (means over logging windows)")
    val_ax.set(xlabel="iteration", ylabel="AP (%)", title="validation AP of rpl_energy")
    for ax in (terms_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
