"""Validation during training: the RPL score on labelled anomaly sets, through the inference core.

One set (``validation.root``) or a suite of sets (``validation.suite``, see
:mod:`rpl_perception.eval.suite`). With a suite, the number that selects the best checkpoint is the
mean AP over its sets (the rule fixed in the suite file); each set's AP / FPR95 is logged too. The
score's calibration (display range, threshold) comes from the same pixels.
"""

import logging
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rpl_perception.calibration import calibrate
from rpl_perception.checkpoint import CheckpointMeta
from rpl_perception.eval.datasets import open_dataset
from rpl_perception.eval.metrics import PixelMetricAccumulator
from rpl_perception.eval.suite import SuiteSet, load_suite
from rpl_perception.models import AnomalyModel, RPLNetwork
from rpl_perception.segmenter import AnomalySegmenter

from .losses import OOD_LABEL, VOID_LABEL

__all__ = ["ValidationSets", "open_validation", "evaluating", "validate", "calibrate_on_batch"]

log = logging.getLogger("rpl_training")

METRICS = ("ap", "fpr95", "auroc")


class ValidationSets:
    """The labelled sets validation runs on: ``[(name, dataset)]``; ``suite`` tells whether the
    per-set metrics are logged beside their mean."""

    def __init__(self, sets: List[Tuple[str, object]], suite: bool):
        self.sets, self.suite = sets, suite

    @property
    def fields(self) -> Tuple[str, ...]:
        """validation.csv columns: the (mean) metrics, the best AP, then each set's AP / FPR95."""
        per_set = []
        if self.suite:
            for name, _ in self.sets:
                per_set += [f"{_slug(name)}_ap", f"{_slug(name)}_fpr95"]
        return ("iteration", *METRICS, "best_ap", *per_set)


def _slug(name: str) -> str:
    return SuiteSet(name, "auto", None).slug


def open_validation(val_cfg) -> Optional[ValidationSets]:
    """The sets of the ``validation`` config section (None when it names none)."""
    if val_cfg["suite"]:
        return ValidationSets([(s.name, open_dataset(s.kind, s.root)) for s in load_suite(val_cfg["suite"])], True)
    if val_cfg["root"]:
        return ValidationSets([(str(val_cfg["root"]), open_dataset(val_cfg["kind"], val_cfg["root"]))], False)
    return None


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode and no autograd inside; back to train mode after."""
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train()


def _validate_set(segmenter: AnomalySegmenter, dataset, count: int, show_progress: bool, samples: list):
    accumulator = PixelMetricAccumulator()
    for index in tqdm(range(count), desc="validating", unit="img", leave=False, disable=not show_progress):
        try:
            sample = dataset[index]
        except OSError as exc:
            log.warning("validation: skipping unreadable sample %d (%s)", index, exc)
            continue
        anomaly = segmenter.predict(sample.image).anomaly
        accumulator.update(anomaly, sample.label)
        samples.append((anomaly[::4, ::4].ravel(), sample.label[::4, ::4].ravel()))
    return accumulator.compute()


def validate(network: RPLNetwork, meta: CheckpointMeta, sets, *, device: torch.device,
             network_size=None, max_images: Optional[int] = None, show_progress: bool = True):
    """AP / FPR95 / AUROC of the ``rpl_energy`` score (labels 0 in, 1 anomaly, else void), through
    :class:`AnomalySegmenter` exactly as at inference, and the score's calibration (display range,
    threshold) on the same pixels (every 4th row and column).

    ``sets``: a :class:`ValidationSets` or one dataset. With several sets the metrics are the means
    over the sets, plus ``<set>_ap`` / ``<set>_fpr95`` per set.
    """
    if not isinstance(sets, ValidationSets):
        sets = ValidationSets([("validation", sets)], False)
    segmenter = AnomalySegmenter(network, meta, score="rpl_energy", network_size=network_size, device=str(device))
    samples: List[Tuple[np.ndarray, np.ndarray]] = []
    per_set: Dict[str, Dict[str, float]] = {}
    for name, dataset in sets.sets:
        count = len(dataset) if max_images is None else min(len(dataset), int(max_images))
        per_set[name] = _validate_set(segmenter, dataset, count, show_progress, samples)
    metrics = {m: float(np.mean([r[m] for r in per_set.values()])) for m in METRICS}
    if sets.suite:
        for name, result in per_set.items():
            metrics.update({f"{_slug(name)}_{m}": result[m] for m in ("ap", "fpr95")})
    calibration = calibrate(np.concatenate([s for s, _ in samples]), np.concatenate([lab for _, lab in samples]))
    return metrics, calibration


def calibrate_on_batch(network: RPLNetwork, meta: CheckpointMeta, batch: Dict[str, torch.Tensor]):
    """Calibration from a training batch when no validation set is configured: pasted objects
    count as anomalies, every other non-void pixel as in-distribution."""
    model = AnomalyModel(network, num_inlier=meta.num_inlier, mean=meta.mean, std=meta.std,
                         score="rpl_energy", smoothing_sigma=meta.smoothing_sigma).to(batch["image"].device)
    with evaluating(network):
        _, anomaly = model(batch["image"])
    labels = batch["label"].cpu().numpy()
    labels = np.where(labels == OOD_LABEL, 1, np.where(labels == VOID_LABEL, VOID_LABEL, 0))
    return calibrate(anomaly.float().cpu().numpy().ravel(), labels.ravel())


def describe(metrics: Dict[str, float], names: Sequence[str]) -> str:
    """One log line: the (mean) metrics, then each set's AP."""
    text = f"AP {metrics['ap']:.4f} FPR95 {metrics['fpr95']:.4f} AUROC {metrics['auroc']:.4f}"
    per_set = [f"{n} {metrics[f'{_slug(n)}_ap']:.3f}" for n in names if f"{_slug(n)}_ap" in metrics]
    return text + (f" (mean over sets; AP: {', '.join(per_set)})" if per_set else "")
