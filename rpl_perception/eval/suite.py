"""An evaluation suite: several labelled anomaly sets scored in one run, one table per set.

A suite file (YAML) lists the sets; paths are relative to the suite file::

    sets:
      - name: RoadAnomaly dev
        kind: road_anomaly                 # a kind of rpl_perception.eval.datasets, or auto
        root: ../../shared/data/roadanomaly_dev

Each set is evaluated offline with every score the model supports (the RPL score and the
closed-set baselines from the same network pass), at the model's network size or at ``native``
resolution (each set's image size rounded up to the network's size divisor). The summary gives,
per score, AP / FPR95 on every set and their means over the sets: the mean AP is the number
training decisions are taken on (``scripts/dev_suite.yaml`` is the development suite).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from .datasets import DATASET_KINDS, open_dataset
from .evaluation import EvaluationResult
from .frames import frames_from_dataset
from .offline import evaluate_offline

__all__ = ["SuiteSet", "SuiteResult", "load_suite", "suite_set", "native_size", "run_suite", "suite_table", "suite_summary"]

NetworkSize = Union[None, str, Tuple[int, int]]


@dataclass(frozen=True)
class SuiteSet:
    name: str
    kind: str
    root: Path

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name.lower()).strip("_")


@dataclass
class SuiteResult:
    sets: List[SuiteSet]
    results: Dict[str, EvaluationResult]  # by set name
    network_sizes: Dict[str, Tuple[int, int]]  # by set name

    @property
    def scores(self) -> List[str]:
        return list(self.results[self.sets[0].name].metrics) if self.sets else []


def load_suite(path) -> List[SuiteSet]:
    """The sets of a suite file; a missing key or unknown kind names the file and the entry."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ValueError(f"cannot read suite file {path}: {exc.strerror or exc}") from None
    entries = loaded.get("sets") if isinstance(loaded, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"suite file {path} must hold a non-empty list 'sets' of {{name, kind, root}}")
    sets = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"name", "root"} <= set(entry):
            raise ValueError(f"suite file {path}, set #{i + 1}: needs 'name' and 'root' (and optionally 'kind')")
        kind = entry.get("kind", "auto")
        if kind != "auto" and kind not in DATASET_KINDS:
            raise ValueError(f"suite file {path}, set {entry['name']!r}: unknown kind {kind!r}; "
                             f"known: auto, {', '.join(DATASET_KINDS)}")
        sets.append(SuiteSet(str(entry["name"]), kind, (path.parent / str(entry["root"])).resolve()))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"suite file {path}: set names must be distinct; got {names}")
    return sets


def suite_set(path, name: str) -> SuiteSet:
    """The set called ``name`` in a suite file; an unknown name lists the file's sets."""
    sets = {entry.name: entry for entry in load_suite(path)}
    if name not in sets:
        raise ValueError(f"{path} has no set {name!r}; it has: {', '.join(sets)}")
    return sets[name]


def native_size(image_size: Tuple[int, int], divisor: int) -> Tuple[int, int]:
    """(width, height) rounded up to multiples of ``divisor``: the network sees the full resolution."""
    return tuple(-(-side // divisor) * divisor for side in image_size)


def run_suite(segmenter_at: Callable[[Optional[Tuple[int, int]]], object], sets: Sequence[SuiteSet], *,
              network_size: NetworkSize = None, scores: Optional[Sequence[str]] = None, batch_size: int = 1,
              num_worst: int = 4, components: bool = True, progress: bool = True,
              obstacles: bool = False) -> SuiteResult:
    """Evaluate every set; ``segmenter_at(size)`` gives an AnomalySegmenter at that network size
    (None: the model's own). ``network_size``: None (model's), ``"native"`` or (width, height)."""
    results, sizes = {}, {}
    for entry in sets:
        dataset = open_dataset(entry.kind, entry.root)
        size = network_size
        if network_size == "native":
            first = dataset[0].image
            probe = segmenter_at(None)
            divisor = probe.network.size_divisor
            size = native_size((first.shape[1], first.shape[0]), divisor)
        segmenter = segmenter_at(size)
        frames, total = frames_from_dataset(dataset)
        component_sizes = DATASET_KINDS[dataset.kind].component_sizes if components else None
        results[entry.name] = evaluate_offline(segmenter, frames, total=total, scores=scores,
                                               batch_size=batch_size, component_sizes=component_sizes,
                                               num_worst=num_worst, source=f"{dataset.kind}:{dataset.root}",
                                               progress=progress, obstacles=obstacles)
        sizes[entry.name] = tuple(segmenter.network_size)
    return SuiteResult(list(sets), results, sizes)


def suite_summary(result: SuiteResult) -> Dict[str, Dict[str, object]]:
    """Per score: {set name: {ap, fpr95, auroc}} and the means over the sets (``mean_ap`` …)."""
    summary = {}
    for score in result.scores:
        per_set = {}
        for entry in result.sets:
            m = result.results[entry.name].metrics.get(score, {})
            per_set[entry.name] = {k: m.get(k) for k in ("ap", "fpr95", "auroc")}
        means = {}
        for key in ("ap", "fpr95", "auroc"):
            values = [v[key] for v in per_set.values() if v[key] is not None]
            means[f"mean_{key}"] = sum(values) / len(values) if len(values) == len(per_set) else None
        summary[score] = {"sets": per_set, **means}
    return summary


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def suite_table(result: SuiteResult) -> str:
    """Markdown: one row per score, AP / FPR95 (in %) on each set, then the means over the sets."""
    summary = suite_summary(result)
    names = [entry.name for entry in result.sets]
    lines = ["| score | " + " | ".join(f"{n} AP / FPR95" for n in names) + " | mean AP | mean FPR95 |",
             "|---|" + "---:|" * (len(names) + 2)]
    for score, s in summary.items():
        cells = [f"{_pct(s['sets'][n]['ap'])} / {_pct(s['sets'][n]['fpr95'])}" for n in names]
        lines.append(f"| {score} | " + " | ".join(cells) + f" | {_pct(s['mean_ap'])} | {_pct(s['mean_fpr95'])} |")
    return "\n".join(lines) + "\n"
