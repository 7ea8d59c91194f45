"""Evaluation reports: ``report.json``, ``report.md`` and plots (matplotlib, Agg backend, no display).

The plots put every evaluated score side by side (the RPL score and the closed-set baselines):

* ``pr_curve.png``: precision over recall, AP in the legend;
* ``roc_curve.png``: TPR over FPR, AUROC and FPR95 in the legend, the 95 % TPR line dashed;
* ``score_histograms.png``: per score, the distribution of in-distribution and anomaly pixel
  scores (each normalised to unit area), from the float16 histograms the metrics stream into;
* ``worst_frames.png``: the frames with the lowest per-frame AP of the primary score: camera
  frame with the heatmap and the threshold contour, ground truth, heatmap.

Numbers come from :class:`~rpl_perception.eval.evaluation.EvaluationResult`; nothing is recomputed here.
"""

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .drive import drive_markdown
from .evaluation import EvaluationResult

__all__ = ["write_report", "metrics_table", "to_json_safe", "PLOTS"]

PLOTS = ("pr_curve.png", "roc_curve.png", "score_histograms.png", "worst_frames.png")

#: (key, column title, higher is better) of the pixel and component metrics in the table
COLUMNS = (("ap", "AP ↑", True), ("fpr95", "FPR95 ↓", False), ("auroc", "AUROC ↑", True),
           ("component_siou", "sIoU ↑", True), ("component_ppv", "PPV ↑", True),
           ("component_f1", "mean F1 ↑", True))

#: ground-truth colours of the worst-frame figure: in-distribution, anomaly, void
TRUTH_COLOURS = {0: (40, 40, 40), 1: (230, 30, 30)}
VOID_COLOUR = (140, 140, 140)


def to_json_safe(value):
    """Numpy scalars / arrays → Python; NaN and ±inf → None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def metrics_table(summary: dict) -> str:
    """Markdown table: one row per score, pixel and (where computed) component metrics; the best
    value of each column in bold when several scores are compared."""
    metrics: Dict[str, dict] = summary["metrics"]
    columns = [c for c in COLUMNS if any(c[0] in m for m in metrics.values())]
    if not columns:
        return "_no anomaly ground truth: no metrics_\n"
    best = {}
    for key, _, higher in columns:
        values = [m[key] for m in metrics.values() if isinstance(m.get(key), float) and math.isfinite(m[key])]
        if len(metrics) > 1 and values:
            best[key] = max(values) if higher else min(values)
    lines = ["| score | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, m in metrics.items():
        cells = []
        for key, _, _ in columns:
            text = _number(m.get(key))
            cells.append(f"**{text}**" if key in best and m.get(key) == best[key] else text)
        primary = " (primary)" if name == summary.get("primary_score") and len(metrics) > 1 else ""
        lines.append(f"| {name}{primary} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(summary: dict, plots: Sequence[str], title: str) -> str:
    out = [f"# {title}", "",
           f"- mode: **{summary.get('mode', '?')}**, source: `{summary.get('source', '')}`",
           f"- frames: {summary['num_frames']} predicted, {summary['num_labelled']} with anomaly ground truth"]
    settings = summary.get("settings") or {}
    if "architecture" in settings:
        out.append(f"- model: {settings['architecture']}, network input {settings['network_size'][0]}×"
                   f"{settings['network_size'][1]}, smoothing σ {settings['smoothing_sigma']}")
    out += ["", "## Anomaly metrics", "",
            "Pixel AP / FPR95 / AUROC pool all evaluated pixels of all frames (Fishyscapes / SMIYC "
            "definition, scores rounded to float16); sIoU / PPV / mean F1 are SMIYC's component "
            "metrics at each score's recorded threshold.", "", metrics_table(summary)]
    errors = {n: m["error"] for n, m in summary["metrics"].items() if "error" in m}
    out += [f"- {name}: {error}" for name, error in errors.items()]
    semantic = summary.get("semantic")
    if semantic:
        out += ["", "## Semantic segmentation", "", f"mIoU over the frames with semantic ground truth: "
                f"**{_number(semantic['miou'])}**", ""]
    delivery = summary.get("delivery")
    if delivery:
        latency = delivery["latency"]
        out += ["", "## Delivery", "",
                f"- delivered: {delivery['frames_delivered']} of {delivery['frames_sent']} frames "
                f"(ratio **{_number(delivery['delivered_ratio'], 3)}**)",
                f"- latency ({delivery.get('latency_clock', '')}): p50 {_number(latency['p50_ms'], 1)} ms, "
                f"p95 {_number(latency['p95_ms'], 1)} ms, mean {_number(latency['mean_ms'], 1)} ms, "
                f"max {_number(latency['max_ms'], 1)} ms", ""]
    timing = summary.get("timing") or {}
    if timing:
        out += ["", "## Timing", ""] + [f"- {key}: {_number(value, 3) if isinstance(value, float) else value}"
                                        for key, value in timing.items()]
    worst = summary.get("worst_frames") or []
    if worst:
        out += ["", f"## Worst frames ({summary.get('primary_score')})", "",
                "| frame | AP |", "|---|---:|"] + [f"| {w['name']} | {_number(w['ap'])} |" for w in worst]
    out += drive_markdown(summary)
    if summary.get("recorded_bag"):
        out += ["", f"Frames, ground truth and maps recorded into `{summary['recorded_bag']}` "
                "(`eval --mode recorded` reads it)."]
    if plots:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(result: EvaluationResult, path: Path, roc: bool) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, curve in result.curves.items():
        m = result.metrics[name]
        if roc:
            ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUROC {m['auroc']:.3f}, FPR95 {m['fpr95']:.3f})")
        else:
            # step plot: AP is the area under this step function
            precision = curve["precision"]
            ax.step(np.concatenate([[0.0], curve["recall"]]), np.concatenate([precision[:1], precision]),
                    where="pre", label=f"{name} (AP {m['ap']:.3f})")
    if roc:
        ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC curve (pixels)")
    else:
        ax.set(xlabel="recall", ylabel="precision", title="Precision–recall curve (anomaly pixels)")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if roc else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_histograms(result: EvaluationResult, path: Path, bins: int = 80) -> None:
    plt = _pyplot()
    names = list(result.histograms)
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        values, inlier, anomaly = result.histograms[name]
        total = inlier + anomaly
        # range: 0.1 % – 99.9 % of all evaluated pixels, so a few extreme scores do not flatten the plot
        cdf = np.cumsum(total) / max(total.sum(), 1)
        low, high = values[np.searchsorted(cdf, 0.001)], values[min(np.searchsorted(cdf, 0.999), values.size - 1)]
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)
        clipped = np.clip(values, low, high)
        for counts, label, colour in ((inlier, "in-distribution", "tab:blue"), (anomaly, "anomaly", "tab:red")):
            if counts.sum():
                ax.hist(clipped, edges, weights=counts, density=True, alpha=0.55, color=colour,
                        label=f"{label} ({int(counts.sum()):,} px)")
        ax.set(title=name, xlabel="score (higher = more anomalous)", ylabel="density")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _truth_rgb(label: np.ndarray) -> np.ndarray:
    rgb = np.empty(label.shape + (3,), np.uint8)
    rgb[:] = VOID_COLOUR
    for value, colour in TRUTH_COLOURS.items():
        rgb[label == value] = colour
    return rgb


def _plot_worst(result: EvaluationResult, path: Path) -> None:
    from ..visualize import colorize_scores, overlay

    plt = _pyplot()
    primary = result.summary["primary_score"]
    settings = result.summary.get("settings") or {}
    display = (settings.get("display_range") or {}).get(primary)
    threshold = (settings.get("threshold") or {}).get(primary)
    frames = result.worst_frames
    fig, axes = plt.subplots(len(frames), 3, figsize=(12, 2.6 * len(frames)), squeeze=False)
    for row, frame in zip(axes, frames):
        low, high = display if display else np.percentile(frame.score, (1, 99))
        if not high > low:
            high = low + 1.0
        heat = colorize_scores(frame.score, low, high)
        if frame.image is not None:
            first = overlay(frame.image, frame.score, low, high, np.inf if threshold is None else threshold)
        else:
            first = heat
        for ax, picture, caption in zip(row, (first, _truth_rgb(frame.label), heat),
                                        (f"{frame.name[:40]}  AP {frame.ap:.3f}", "ground truth (red anomaly, "
                                         "grey void)", f"{primary} on [{low:.2f}, {high:.2f}]")):
            ax.imshow(picture)
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result: EvaluationResult, out_dir, title: Optional[str] = None) -> Dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the plots that have data into ``out_dir``.

    Returns name → path of every file written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    plots: List[str] = []
    if result.curves:
        for name, roc in (("pr_curve.png", False), ("roc_curve.png", True)):
            _plot_curves(result, out_dir / name, roc)
            plots.append(name)
    if result.histograms:
        _plot_histograms(result, out_dir / "score_histograms.png")
        plots.append("score_histograms.png")
    if result.worst_frames:
        _plot_worst(result, out_dir / "worst_frames.png")
        plots.append("worst_frames.png")
    written.update({name: out_dir / name for name in plots})
    title = title or f"Anomaly evaluation ({result.summary.get('mode', '')})"
    (out_dir / "report.json").write_text(json.dumps(to_json_safe(result.summary), indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(_markdown(result.summary, plots, title), encoding="utf-8")
    written["report.json"], written["report.md"] = out_dir / "report.json", out_dir / "report.md"
    return written
