"""Anomaly-segmentation and semantic-segmentation metrics (numpy + OpenCV, no torch).

Label convention for the anomaly metrics, as in the Fishyscapes and Segment-Me-If-You-Can (SMIYC)
benchmarks: 0 = in-distribution, 1 = anomaly, any other value (255 in the released sets) = void,
ignored. Higher score = more anomalous.

Pixel level (:func:`pixel_metrics`, :class:`PixelMetricAccumulator`), following the Fishyscapes
benchmark (Blum et al., IJCV 2021) and SMIYC's ``pixel_classification_curves.py``: all evaluated
pixels of all images are pooled into one ranking (not averaged per image) and every distinct score
is one threshold (ties are one step of the curve), a pixel being flagged when its score is ≥ the
threshold.

* ``ap``: average precision as scikit-learn's ``average_precision_score``:
  AP = Σ_n (R_n − R_{n−1}) · P_n over the thresholds from high to low (step-wise, no
  interpolation), R_0 = 0.
* ``auroc``: area under the ROC curve (FPR, TPR), starting at (0, 0), by the trapezoid rule.
* ``fpr95``: the false-positive rate at the first (highest) threshold whose TPR is ≥ 0.95, i.e.
  ``fpr[argmax(tpr >= 0.95)]`` on the full curve (scikit-learn ``roc_curve`` with
  ``drop_intermediate=False``).

Both need anomaly and in-distribution pixels: with either missing they raise ``ValueError``
(as scikit-learn does for AUROC) rather than return a number that means nothing.

Component level (:func:`component_metrics`): sIoU, PPV and mean F1 of SMIYC (Chan et al., NeurIPS
2021 Datasets and Benchmarks, Sec. 4; ``metrics/instance_segmentation.py`` of
SegmentMeIfYouCan/road-anomaly-benchmark). Semantic segmentation: :func:`miou`.
"""

from typing import Dict, List, Tuple

import cv2
import numpy as np

from ..labels import NUM_CITYSCAPES_CLASSES, VOID

__all__ = [
    "pixel_metrics", "PixelMetricAccumulator", "to_float16",
    "component_metrics", "ComponentMetricAccumulator", "SIOU_THRESHOLDS",
    "miou", "ConfusionMatrix",
]

IN_DISTRIBUTION, ANOMALY = 0, 1

#: SMIYC's sIoU / PPV thresholds τ for the component F1: 0.25, 0.30, …, 0.75 (np.linspace, as SMIYC)
SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11, endpoint=True)

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


# ----------------------------------------------------------------------------- input checks

def _as_pairs(first, second, what: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    """One image (two arrays) or a list of images (two equal-length lists) → list of array pairs of
    equal shape (sizes may differ between images)."""
    single = isinstance(first, np.ndarray), isinstance(second, np.ndarray)
    if all(single):
        first, second = [first], [second]
    elif any(single):
        raise ValueError(f"{what}: pass two arrays (one image) or two lists of arrays (one per image); "
                         f"got {type(first).__name__} and {type(second).__name__}")
    first, second = list(first), list(second)
    if len(first) != len(second):
        raise ValueError(f"{what}: got {len(first)} and {len(second)} maps; need one of each per image")
    if not first:
        raise ValueError(f"{what}: no images given")
    pairs = [(np.asarray(a), np.asarray(b)) for a, b in zip(first, second)]
    for i, (a, b) in enumerate(pairs):
        if a.shape != b.shape:
            raise ValueError(f"{what}: image {i}: shapes differ: {a.shape} and {b.shape}")
    return pairs


def _check_dtypes(score: np.ndarray, label: np.ndarray, where: str) -> None:
    if score.dtype.kind not in "fiub":
        raise ValueError(f"{where}: scores must be a real-valued (float, integer or bool) array; "
                         f"got dtype {score.dtype}")
    if label.dtype.kind not in "iub":
        raise ValueError(f"{where}: labels must be an integer array (0 in-distribution, 1 anomaly, "
                         f"other = void); got dtype {label.dtype}")


def _raise_if_nan(evaluated_scores: np.ndarray, where: str) -> None:
    if evaluated_scores.dtype.kind == "f" and np.isnan(evaluated_scores).any():
        raise ValueError(f"{where}: {int(np.isnan(evaluated_scores).sum())} evaluated pixels have NaN scores; "
                         "scores must be numbers (NaN in void pixels is ignored)")


# ----------------------------------------------------------------------------- pixel level

def _curves(anomaly_counts: np.ndarray, inlier_counts: np.ndarray) -> Dict[str, np.ndarray]:
    """Precision / recall per threshold and the ROC points (FPR, TPR) from (0, 0), from
    per-threshold pixel counts ordered from high to low (ValueError if a class is missing)."""
    tp = np.cumsum(anomaly_counts, dtype=np.int64)
    fp = np.cumsum(inlier_counts, dtype=np.int64)
    num_anomaly, num_inlier = int(tp[-1]) if tp.size else 0, int(fp[-1]) if fp.size else 0
    if num_anomaly == 0 or num_inlier == 0:
        raise ValueError("pixel metrics need both anomaly (label 1) and in-distribution (label 0) pixels; "
                         f"got {num_anomaly} anomaly and {num_inlier} in-distribution pixels")
    precision = tp / (tp + fp)  # every threshold holds ≥ 1 pixel, so tp + fp > 0
    recall = tp / num_anomaly
    return {"precision": precision, "recall": recall,
            "tpr": np.concatenate([[0.0], recall]), "fpr": np.concatenate([[0.0], fp / num_inlier])}


def _curve_metrics(anomaly_counts: np.ndarray, inlier_counts: np.ndarray) -> Dict[str, float]:
    """AP, FPR95, AUROC from per-threshold pixel counts, thresholds ordered from high to low.

    Shared by the in-memory and the streaming path so both run the same float arithmetic.
    """
    curves = _curves(anomaly_counts, inlier_counts)
    precision, recall, tpr, fpr = curves["precision"], curves["recall"], curves["tpr"], curves["fpr"]
    ap = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoid rule (np.trapz in numpy < 2)
    fpr95 = float(fpr[np.argmax(tpr >= 0.95)])  # tpr reaches 1 at the last threshold
    return {"ap": ap, "fpr95": fpr95, "auroc": auroc}


def pixel_metrics(scores, labels) -> Dict[str, float]:
    """Pixel-level ``ap``, ``fpr95``, ``auroc`` (see the module docstring for the definitions).

    ``scores``, ``labels``: one H×W pair of arrays or two equal-length lists (one pair per image;
    sizes may differ between images). Scores are used at their own precision; pass them through
    :func:`to_float16` to get exactly what :class:`PixelMetricAccumulator` computes.

    Raises ``ValueError`` on shape mismatch, non-numeric scores, non-integer labels, NaN scores on
    evaluated (label 0/1) pixels, or when there is no anomaly or no in-distribution pixel.
    """
    evaluated_scores, is_anomaly = [], []
    for i, (score, label) in enumerate(_as_pairs(scores, labels, "pixel_metrics")):
        _check_dtypes(score, label, f"pixel_metrics: image {i}")
        evaluated = (label == IN_DISTRIBUTION) | (label == ANOMALY)
        evaluated_scores.append(score[evaluated])
        is_anomaly.append(label[evaluated] == ANOMALY)
    evaluated_scores = np.concatenate(evaluated_scores)
    is_anomaly = np.concatenate(is_anomaly)
    _raise_if_nan(evaluated_scores, "pixel_metrics")
    # distinct scores ascending; -0.0 and +0.0 compare equal and are one threshold
    thresholds, index = np.unique(evaluated_scores, return_inverse=True)
    anomaly_counts = np.bincount(index[is_anomaly], minlength=thresholds.size)
    inlier_counts = np.bincount(index[~is_anomaly], minlength=thresholds.size)
    return _curve_metrics(anomaly_counts[::-1], inlier_counts[::-1])


def to_float16(scores) -> np.ndarray:
    """Scores as SMIYC stores them: clipped to the finite float16 range [−65504, 65504], then cast
    to float16 with IEEE round-to-nearest-even. ±inf therefore become ±65504 (ties with the largest
    finite value) instead of overflowing; NaN stays NaN."""
    scores = np.asarray(scores)
    if scores.dtype.kind == "b":
        return scores.astype(np.float16)
    if scores.dtype.kind not in "fiu":
        raise ValueError(f"scores must be a real-valued array; got dtype {scores.dtype}")
    return np.clip(scores, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


def _float16_bits_to_order_key() -> Tuple[np.ndarray, np.ndarray]:
    """(key of every float16 bit pattern, float16 value of every key).

    The key orders float16 values as numbers: non-negative patterns get the sign bit set (above
    all negatives), negative patterns are bit-inverted (a larger magnitude gives a smaller key).
    """
    bits = np.arange(1 << 16, dtype=np.uint32)
    negative = (bits & 0x8000) != 0
    keys = np.where(negative, ~bits & 0xFFFF, bits | 0x8000).astype(np.uint16)
    values = np.empty(1 << 16, dtype=np.float16)
    values[keys] = bits.astype(np.uint16).view(np.float16)
    return keys, values


_KEY_OF_BITS, _VALUE_OF_KEY = _float16_bits_to_order_key()
_NEGATIVE_ZERO_KEY, _POSITIVE_ZERO_KEY = int(_KEY_OF_BITS[0x8000]), int(_KEY_OF_BITS[0x0000])
_IS_NAN_KEY = np.isnan(_VALUE_OF_KEY)
# label value → column: 0 in-distribution, 1 anomaly, 2 void (every other uint8 value)
_LABEL_COLUMN_UINT8 = np.full(256, 2, dtype=np.intp)
_LABEL_COLUMN_UINT8[IN_DISTRIBUTION], _LABEL_COLUMN_UINT8[ANOMALY] = 0, 1


class PixelMetricAccumulator:
    """Streaming :func:`pixel_metrics` in bounded memory (two 65536-bin int64 histograms, 1 MiB).

    Every score is rounded as :func:`to_float16` does (clip to ±65504, round-to-nearest-even cast
    to float16), as the SMIYC benchmark stores anomaly scores; each float16 value is one histogram
    bin, so the result equals ``pixel_metrics(to_float16(s), l)`` on all frames at once, exactly
    (the same counts per threshold go through the same arithmetic), however many frames are added.
    -0.0 and +0.0 share a bin. NaN on evaluated pixels raises ``ValueError`` and leaves the
    accumulator unchanged. Usage::

        accumulator = PixelMetricAccumulator()
        for score, label in frames:
            accumulator.update(score, label)
        accumulator.compute()  # {"ap": ..., "fpr95": ..., "auroc": ...}
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        #: [key, 0] in-distribution and [key, 1] anomaly pixel counts per float16 value
        self.counts = np.zeros((1 << 16, 2), dtype=np.int64)
        self.num_frames = 0

    def update(self, score: np.ndarray, label: np.ndarray) -> None:
        """Add one frame: H×W scores (any real dtype) and H×W integer labels."""
        score, label = np.asarray(score), np.asarray(label)
        if score.shape != label.shape:
            raise ValueError(f"PixelMetricAccumulator.update: score shape {score.shape} != label shape {label.shape}")
        _check_dtypes(score, label, "PixelMetricAccumulator.update")
        keys = _KEY_OF_BITS[to_float16(score).view(np.uint16)]
        if label.dtype == np.uint8:
            column = _LABEL_COLUMN_UINT8[label]
        else:
            column = np.where(label == IN_DISTRIBUTION, 0, np.where(label == ANOMALY, 1, 2))
        # one bincount over (key, column) pairs; void pixels land in column 2 and are dropped
        frame = np.bincount((keys.astype(np.intp) * 3 + column).ravel(), minlength=3 << 16)
        frame = frame.reshape(1 << 16, 3)[:, :2]
        num_nan = int(frame[_IS_NAN_KEY].sum())
        if num_nan:
            raise ValueError(f"PixelMetricAccumulator.update: {num_nan} evaluated pixels have NaN scores; "
                             "scores must be numbers (NaN in void pixels is ignored)")
        self.counts += frame
        self.num_frames += 1

    def compute(self) -> Dict[str, float]:
        """``ap``, ``fpr95``, ``auroc`` over all frames added so far (ValueError if degenerate)."""
        _, inlier, anomaly = self.histogram()
        return _curve_metrics(anomaly[::-1], inlier[::-1])  # thresholds from high to low

    def histogram(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distinct float16 scores ascending, as float64; in-distribution and anomaly pixel counts
        of each) over all frames so far: the thresholds of the curves, and score histograms for plots."""
        counts = self.counts.copy()
        counts[_POSITIVE_ZERO_KEY] += counts[_NEGATIVE_ZERO_KEY]
        counts[_NEGATIVE_ZERO_KEY] = 0
        occupied = counts.sum(axis=1) > 0
        return _VALUE_OF_KEY[occupied].astype(np.float64), counts[occupied, 0], counts[occupied, 1]

    def curves(self) -> Dict[str, np.ndarray]:
        """The curves :meth:`compute` integrates: ``threshold`` (high to low) with ``precision`` and
        ``recall`` at each, and the ROC points ``fpr``, ``tpr`` starting at (0, 0)."""
        values, inlier, anomaly = self.histogram()
        return {"threshold": values[::-1], **_curves(anomaly[::-1], inlier[::-1])}


# ----------------------------------------------------------------------------- component level

def _components(mask: np.ndarray) -> Tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a boolean mask: (count incl. background, H×W int32 ids, sizes)."""
    count, ids, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8,
                                                            ltype=cv2.CV_32S)
    return count, ids, stats[:, cv2.CC_STAT_AREA]


def _image_component_scores(score: np.ndarray, label: np.ndarray, threshold: float,
                            min_pred_size: int, min_gt_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(sIoU of each ground-truth component, PPV of each predicted component) for one image.

    Steps as SMIYC's ``default_instancer`` + ``segment_metrics``: prediction = score > threshold
    outside void; 8-connected components; predicted components with fewer than ``min_pred_size``
    pixels removed (size counted before small GT components are voided); GT components with fewer
    than ``min_gt_size`` pixels turned void; everything else is measured inside the non-void region.
    """
    void = (label != IN_DISTRIBUTION) & (label != ANOMALY)
    num_gt, gt_ids, gt_sizes = _components(np.ascontiguousarray(label == ANOMALY))
    num_pred, pred_ids, pred_sizes = _components(np.ascontiguousarray((score > threshold) & ~void))

    small_gt = gt_sizes < min_gt_size
    small_gt[0] = False
    small_pred = pred_sizes < min_pred_size
    small_pred[0] = True  # background is not a component
    evaluated = ~void & ~small_gt[gt_ids]
    gt_in, pred_in = gt_ids[evaluated], pred_ids[evaluated]
    pred_in[small_pred[pred_in]] = 0

    # contingency table C[g, p] of pixel counts, sparse: only (g, p) pairs that occur
    touched = (gt_in > 0) | (pred_in > 0)
    pair_ids, pair_counts = np.unique(gt_in[touched].astype(np.int64) * num_pred + pred_in[touched],
                                      return_counts=True)
    g, p = pair_ids // num_pred, pair_ids % num_pred
    gt_size = np.bincount(g, weights=pair_counts, minlength=num_gt)
    pred_size = np.bincount(p, weights=pair_counts, minlength=num_pred)
    pred_on_background = np.bincount(p[g == 0], weights=pair_counts[g == 0], minlength=num_pred)

    # sIoU(k) = |k ∩ P(k)| / |(k ∪ P(k)) \ A(k)|, A(k) = pixels of P(k) on other GT components,
    # so the denominator is |k| + |P(k) on background|.
    overlap = (g > 0) & (p > 0)
    intersection = np.bincount(g[overlap], weights=pair_counts[overlap], minlength=num_gt)
    p_background = np.bincount(g[overlap], weights=pred_on_background[p[overlap]], minlength=num_gt)
    gt_present = np.flatnonzero(gt_size[1:] > 0) + 1
    siou = intersection[gt_present] / (gt_size[gt_present] + p_background[gt_present])

    # PPV(p) = |p ∩ GT| / |p|
    pred_present = np.flatnonzero(pred_size[1:] > 0) + 1
    ppv = (pred_size[pred_present] - pred_on_background[pred_present]) / pred_size[pred_present]
    return siou, ppv


class ComponentMetricAccumulator:
    """Streaming :func:`component_metrics`: per-frame component scores, aggregated as SMIYC does.

    Components never cross frames. ``compute()`` returns

    * ``siou``: mean sIoU over all ground-truth components of all frames (SMIYC ``sIoU_gt``);
    * ``ppv``: mean PPV over all predicted components of all frames (SMIYC ``prec_pred``);
    * ``f1``: mean over τ ∈ :data:`SIOU_THRESHOLDS` of F1(τ) = 2TP / (2TP + FN + FP), TP / FN =
      ground-truth components with sIoU ≥ τ / < τ, FP = predicted components with PPV < τ;
    * ``num_gt_components``, ``num_pred_components``.

    A mean over no components is NaN (no GT component → ``siou`` NaN; no predicted component →
    ``ppv`` NaN; neither → ``f1`` NaN), where SMIYC would divide by zero.
    """

    def __init__(self, threshold: float, min_pred_size: int = 500, min_gt_size: int = 100):
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number; got {threshold!r}")
        for name, value in (("min_pred_size", min_pred_size), ("min_gt_size", min_gt_size)):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
        self.threshold, self.min_pred_size, self.min_gt_size = float(threshold), int(min_pred_size), int(min_gt_size)
        self.siou: List[np.ndarray] = []
        self.ppv: List[np.ndarray] = []

    def update(self, score: np.ndarray, label: np.ndarray) -> None:
        """Add one frame: H×W scores and H×W integer labels (0 in, 1 anomaly, other void)."""
        score, label = np.asarray(score), np.asarray(label)
        where = "ComponentMetricAccumulator.update"
        if score.shape != label.shape:
            raise ValueError(f"{where}: score shape {score.shape} != label shape {label.shape}")
        if score.ndim != 2:
            raise ValueError(f"{where}: expected H×W maps; got shape {score.shape}")
        _check_dtypes(score, label, where)
        _raise_if_nan(score[(label == IN_DISTRIBUTION) | (label == ANOMALY)], where)
        siou, ppv = _image_component_scores(score, label, self.threshold, self.min_pred_size, self.min_gt_size)
        self.siou.append(siou)
        self.ppv.append(ppv)

    def compute(self) -> Dict[str, float]:
        siou = np.concatenate(self.siou) if self.siou else np.zeros(0)
        ppv = np.concatenate(self.ppv) if self.ppv else np.zeros(0)
        f1 = []
        for tau in SIOU_THRESHOLDS:
            tp = np.count_nonzero(siou >= tau)
            fn = siou.size - tp
            fp = np.count_nonzero(ppv < tau)
            f1.append(2 * tp / (2 * tp + fn + fp) if (tp + fn + fp) else np.nan)
        return {
            "siou": float(siou.mean()) if siou.size else float("nan"),
            "ppv": float(ppv.mean()) if ppv.size else float("nan"),
            "f1": float(np.mean(f1)),
            "num_gt_components": int(siou.size),
            "num_pred_components": int(ppv.size),
        }


def component_metrics(scores, labels, threshold: float, min_pred_size: int = 500,
                      min_gt_size: int = 100) -> Dict[str, float]:
    """SMIYC component-level ``siou``, ``ppv``, ``f1`` (see :class:`ComponentMetricAccumulator`).

    A pixel is predicted anomalous when its score is > ``threshold``. SMIYC sizes: AnomalyTrack
    ``min_pred_size=500, min_gt_size=100``; ObstacleTrack ``50, 10``. One H×W pair or two lists.
    """
    accumulator = ComponentMetricAccumulator(threshold, min_pred_size, min_gt_size)
    for score, label in _as_pairs(scores, labels, "component_metrics"):
        accumulator.update(score, label)
    return accumulator.compute()


# ----------------------------------------------------------------------------- semantic segmentation

class ConfusionMatrix:
    """Streaming confusion matrix for semantic segmentation, ``matrix[gt, pred]`` pixel counts.

    Pixels whose ground truth is ``ignore_index`` are skipped. ``compute()`` gives per-class
    IoU_c = TP / (TP + FP + FN) (Cityscapes ``evalPixelLevelSemanticLabeling``): NaN for classes
    absent from both ground truth and prediction, which the ``miou`` mean leaves out.
    """

    def __init__(self, num_classes: int = NUM_CITYSCAPES_CLASSES, ignore_index: int = VOID):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class id (num_classes={num_classes})")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred, gt = np.asarray(pred), np.asarray(gt)
        where = "ConfusionMatrix.update"
        if pred.shape != gt.shape:
            raise ValueError(f"{where}: prediction shape {pred.shape} != ground-truth shape {gt.shape}")
        for name, array in (("prediction", pred), ("ground truth", gt)):
            if array.dtype.kind not in "iu":
                raise ValueError(f"{where}: {name} must hold integer class ids; got dtype {array.dtype}")
        labelled = gt != self.ignore_index
        gt, pred = gt[labelled].astype(np.int64), pred[labelled].astype(np.int64)
        for name, array in (("ground truth", gt), ("prediction", pred)):
            bad = (array < 0) | (array >= self.num_classes)
            if bad.any():
                raise ValueError(f"{where}: {name} has ids {np.unique(array[bad])[:10].tolist()} outside "
                                 f"0..{self.num_classes - 1} (ignore_index={self.ignore_index}) on labelled pixels")
        self.matrix += np.bincount(gt * self.num_classes + pred,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def compute(self) -> Dict[str, object]:
        """``{"miou": float, "iou": (num_classes,) float64 array with NaN for absent classes}``."""
        if self.matrix.sum() == 0:
            raise ValueError("mIoU needs at least one labelled pixel (ground truth != ignore_index)")
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - tp
        iou = np.full(self.num_classes, np.nan)
        np.divide(tp, union, out=iou, where=union > 0)
        return {"miou": float(np.nanmean(iou)), "iou": iou}


def miou(pred_labels, gt_labels, num_classes: int = NUM_CITYSCAPES_CLASSES, ignore_index: int = VOID) -> Dict[str, object]:
    """Mean IoU over one H×W pair or two lists of label maps, confusion matrix summed over images
    (not averaged per image). Classes absent from both ground truth and prediction are excluded
    from the mean; see :class:`ConfusionMatrix`."""
    confusion = ConfusionMatrix(num_classes, ignore_index)
    for pred, gt in _as_pairs(pred_labels, gt_labels, "miou"):
        confusion.update(pred, gt)
    return confusion.compute()

