"""Metrics against hand-computed answers and scikit-learn (the reference for AP / AUROC / ROC)."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

from rpl_perception.eval.metrics import (
    SIOU_THRESHOLDS,
    ComponentMetricAccumulator,
    ConfusionMatrix,
    PixelMetricAccumulator,
    component_metrics,
    miou,
    pixel_metrics,
    to_float16,
)


def sklearn_pixel_metrics(scores, labels):
    """Reference: pool label-0/1 pixels of all images, score with scikit-learn."""
    scores = np.concatenate([np.ravel(s).astype(np.float64) for s in scores])
    labels = np.concatenate([np.ravel(l) for l in labels])
    keep = (labels == 0) | (labels == 1)
    y, s = labels[keep], scores[keep]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"ap": average_precision_score(y, s), "fpr95": fpr[np.argmax(tpr >= 0.95)],
            "auroc": roc_auc_score(y, s)}


def random_frames(rng, count, tie_levels=None):
    frames = []
    for _ in range(count):
        h, w = rng.integers(5, 40, size=2)
        label = rng.choice(np.array([0, 1, 255], np.uint8), size=(h, w), p=[0.6, 0.3, 0.1])
        if tie_levels:  # few distinct values: many ties, anomalies shifted up
            score = rng.integers(0, tie_levels, size=(h, w)) + 3 * (label == 1)
            score = score.astype(np.float32)
        else:
            score = (rng.standard_normal((h, w)) + 1.5 * (label == 1)).astype(np.float32)
        frames.append((score, label))
    return [f[0] for f in frames], [f[1] for f in frames]


# ----------------------------------------------------------------------------- pixel metrics, by hand

def test_pixel_metrics_hand_computed():
    # ranking a, i, a, i: precision 1, 1/2, 2/3, 2/4 at recall 1/2, 1/2, 1, 1
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    labels = np.array([[1, 0, 1, 0]], np.uint8)
    result = pixel_metrics(scores, labels)
    assert result["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result["auroc"] == pytest.approx(3 / 4)  # 3 of 4 (anomaly, inlier) pairs ordered right
    assert result["fpr95"] == pytest.approx(1 / 2)  # TPR first reaches 1 at 0.7, where 1 of 2 inliers is flagged


def test_pixel_metrics_ties_are_one_threshold():
    # 0.5 holds one anomaly and one inlier: a single step, the tie counts half in AUROC
    scores = np.array([0.9, 0.5, 0.5, 0.2])
    labels = np.array([1, 1, 0, 0], np.uint8)
    result = pixel_metrics(scores, labels)
    assert result["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result["auroc"] == pytest.approx(3.5 / 4)
    assert result["fpr95"] == pytest.approx(0.5)
    # all scores equal: one threshold, AP = anomaly fraction, AUROC = 0.5, FPR95 = 1
    flat = pixel_metrics(np.zeros(5), np.array([1, 0, 0, 0, 0]))
    assert flat == pytest.approx({"ap": 0.2, "auroc": 0.5, "fpr95": 1.0})


def test_pixel_metrics_perfect_and_inverted():
    labels = np.array([0, 0, 0, 1, 1], np.uint8)
    assert pixel_metrics(np.arange(5.0), labels) == pytest.approx({"ap": 1.0, "auroc": 1.0, "fpr95": 0.0})
    inverted = pixel_metrics(-np.arange(5.0), labels)
    assert inverted["auroc"] == pytest.approx(0.0)
    assert inverted["fpr95"] == pytest.approx(1.0)
    assert inverted["ap"] == pytest.approx((1 / 4 + 2 / 5) / 2)


def test_fpr95_is_first_threshold_reaching_95_percent():
    # 20 anomalies: 19 above every inlier, the 20th below 10 of 20 inliers.
    # TPR = 0.95 after the 19th anomaly with FPR 0; a >= comparison must pick that point.
    scores = np.concatenate([np.arange(100, 119), [5.0], np.arange(20.0) / 2])
    labels = np.concatenate([np.ones(20), np.zeros(20)]).astype(np.uint8)
    assert pixel_metrics(scores, labels)["fpr95"] == 0.0
    # 19 anomalies only: TPR 18/19 < 0.95 before the 19th, which sits below half of the inliers
    scores, labels = np.concatenate([scores[:18], scores[19:]]), np.concatenate([labels[:18], labels[19:]])
    assert pixel_metrics(scores, labels)["fpr95"] == pytest.approx(10 / 20)


def test_void_pixels_ignored_even_if_nan():
    scores = np.array([[0.9, 0.8, 0.7, 0.1, np.nan, 5.0]])
    labels = np.array([[1, 0, 1, 0, 255, 7]], np.uint8)
    assert pixel_metrics(scores, labels) == pixel_metrics(scores[:, :4], labels[:, :4])


def test_pixels_pooled_over_images_not_averaged():
    # each image alone is perfectly ranked, pooled the anomaly of image 2 falls below image 1's inlier
    scores = [np.array([0.9, 0.8]), np.array([0.2, 0.1])]
    labels = [np.array([1, 0]), np.array([1, 0])]
    for s, l in zip(scores, labels):
        assert pixel_metrics(s, l)["auroc"] == 1.0
    pooled = pixel_metrics(scores, labels)
    assert pooled["auroc"] == pytest.approx(3 / 4)
    assert pooled["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


@pytest.mark.parametrize("tie_levels", [None, 4, 30])
def test_pixel_metrics_match_sklearn(tie_levels):
    rng = np.random.default_rng(tie_levels or 0)
    scores, labels = random_frames(rng, 6, tie_levels)
    result, reference = pixel_metrics(scores, labels), sklearn_pixel_metrics(scores, labels)
    for key in ("ap", "auroc", "fpr95"):
        assert result[key] == pytest.approx(reference[key], abs=1e-12), key


def test_pixel_metrics_bad_input():
    with pytest.raises(ValueError, match=r"shapes differ: \(2, 3\) and \(3, 2\)"):
        pixel_metrics(np.zeros((2, 3)), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="1 evaluated pixels have NaN"):
        pixel_metrics(np.array([np.nan, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="got 0 anomaly and 3 in-distribution"):
        pixel_metrics(np.arange(4.0), np.array([0, 0, 0, 255]))
    with pytest.raises(ValueError, match="got 2 anomaly and 0 in-distribution"):
        pixel_metrics(np.arange(3.0), np.array([1, 1, 255]))
    with pytest.raises(ValueError, match="labels must be an integer array"):
        pixel_metrics(np.arange(2.0), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="got 2 and 1 maps"):
        pixel_metrics([np.zeros(2), np.zeros(2)], [np.array([0, 1])])
    with pytest.raises(ValueError, match="two arrays .* or two lists"):
        pixel_metrics([np.zeros(2)], np.array([0, 1]))
    with pytest.raises(ValueError, match="no images"):
        pixel_metrics([], [])


# ----------------------------------------------------------------------------- streaming pixel metrics

def test_to_float16_rounding_and_saturation():
    x = np.array([2049.0, 2051.0, 65519.0, 65520.0, 1e6, np.inf, -np.inf, -1e9, 0.1, np.nan])
    expected = np.array([2048, 2052, 65504, 65504, 65504, 65504, -65504, -65504, np.float16(0.1), np.nan],
                        np.float16)  # 2049 and 2051 are halfway: round to even mantissa
    np.testing.assert_array_equal(to_float16(x), expected)
    assert to_float16(np.array([True, False])).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="real-valued"):
        to_float16(np.array(["a"]))


@pytest.mark.parametrize("tie_levels", [None, 5])
def test_accumulator_equals_in_memory_on_float16_scores(tie_levels):
    rng = np.random.default_rng(1)
    scores, labels = random_frames(rng, 8, tie_levels)
    scores = [s * 1e-3 if i % 2 else s * 3e4 for i, s in enumerate(scores)]  # subnormals .. saturation
    scores[0][0, 0], scores[1][0, 0] = np.inf, -np.inf
    accumulator = PixelMetricAccumulator()
    for s, l in zip(scores, labels):
        accumulator.update(s, l)
    streamed = accumulator.compute()
    in_memory = pixel_metrics([to_float16(s) for s in scores], labels)
    reference = sklearn_pixel_metrics([to_float16(s) for s in scores], labels)
    for key in ("ap", "auroc", "fpr95"):
        assert streamed[key] == pytest.approx(in_memory[key], abs=1e-12, rel=0), key
        assert streamed[key] == pytest.approx(reference[key], abs=1e-12, rel=0), key
    assert accumulator.num_frames == 8


def test_accumulator_orders_every_float16_value():
    # each finite float16 value once, anomaly exactly when the value is positive: a perfect ranking
    # only if the bin order follows the numeric order over negatives, subnormals and zeros
    values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    values = values[np.isfinite(values)]
    label = (values > 0).astype(np.uint8)
    accumulator = PixelMetricAccumulator()
    accumulator.update(values, label)
    assert accumulator.compute() == {"ap": 1.0, "fpr95": 0.0, "auroc": 1.0}
    # reversed labels: the exact opposite
    accumulator.reset()
    accumulator.update(-values, label)
    assert accumulator.compute()["auroc"] == 0.0


def test_accumulator_negative_zero_ties_with_zero():
    accumulator = PixelMetricAccumulator()
    accumulator.update(np.array([-0.0, 0.0]), np.array([1, 0], np.int32))
    assert accumulator.compute() == {"ap": 0.5, "fpr95": 1.0, "auroc": 0.5}


def test_accumulator_labels_of_any_integer_dtype():
    rng = np.random.default_rng(2)
    score = rng.random((16, 16)).astype(np.float32)
    label = rng.choice(np.array([0, 1, 255, -1, 2]), size=(16, 16))
    results = []
    for dtype in (np.uint8, np.int32, np.int64):
        kept = label if dtype != np.uint8 else np.where(label < 0, 255, label)
        accumulator = PixelMetricAccumulator()
        accumulator.update(score, kept.astype(dtype))
        results.append(accumulator.compute())
    assert results[0] == results[1] == results[2] == pixel_metrics(to_float16(score), label)


def test_accumulator_rejects_nan_and_stays_unchanged():
    accumulator = PixelMetricAccumulator()
    accumulator.update(np.array([0.2, 0.1]), np.array([1, 0], np.uint8))
    before = accumulator.counts.copy()
    with pytest.raises(ValueError, match="1 evaluated pixels have NaN"):
        accumulator.update(np.array([np.nan, 0.3]), np.array([0, 1], np.uint8))
    np.testing.assert_array_equal(accumulator.counts, before)
    accumulator.update(np.array([np.nan, 0.3]), np.array([255, 1], np.uint8))  # NaN in void is fine
    assert accumulator.num_frames == 2
    with pytest.raises(ValueError, match="score shape"):
        accumulator.update(np.zeros(3), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="got 0 anomaly and 0"):
        PixelMetricAccumulator().compute()


# ----------------------------------------------------------------------------- component metrics

def square(mask, top, left, size):
    mask[top:top + size, left:left + size] = True
    return mask


def test_component_perfect_prediction():
    label = square(np.zeros((50, 50), bool), 10, 10, 20).astype(np.uint8)
    result = component_metrics(label.astype(np.float32), label, threshold=0.5, min_pred_size=0, min_gt_size=0)
    assert result == {"siou": 1.0, "ppv": 1.0, "f1": 1.0, "num_gt_components": 1, "num_pred_components": 1}


def test_component_half_overlap_f1_over_thresholds():
    label = square(np.zeros((50, 50), np.uint8), 10, 10, 20)          # 400 px
    score = np.zeros((50, 50))
    score[10:30, 10:50] = 1.0                                         # GT + 400 px background
    result = component_metrics(score, label, threshold=0.5, min_pred_size=0, min_gt_size=0)
    assert result["siou"] == 0.5 and result["ppv"] == 0.5
    # τ = 0.25 … 0.50 (6 values): TP; τ = 0.55 … 0.75 (5 values): FN and FP
    assert np.count_nonzero(0.5 >= SIOU_THRESHOLDS) == 6
    assert result["f1"] == pytest.approx(6 / 11)


def test_component_siou_ignores_prediction_on_other_gt_components():
    label = np.zeros((30, 50), np.uint8)
    label[10:20, 10:20] = 1  # A: 100 px
    label[10:20, 30:40] = 1  # B: 100 px
    score = np.zeros((30, 50))
    score[10:20, 10:40] = 1  # one component over A, B and 100 px of background between them
    result = component_metrics(score, label, 0.5, min_pred_size=0, min_gt_size=0)
    assert result["num_gt_components"] == 2 and result["num_pred_components"] == 1
    assert result["siou"] == pytest.approx(100 / 200)  # not 100 / 300: B's pixels are not in A's union
    assert result["ppv"] == pytest.approx(200 / 300)


def test_component_void_removed_before_components():
    label = np.zeros((20, 40), np.uint8)
    label[5:15, 5:15] = 1
    label[:, 20] = 255                      # void column splits the prediction
    score = np.zeros((20, 40))
    score[5:15, 5:15] = 1
    score[2:18, 18:30] = 1                  # crosses the void column: two components, no GT
    result = component_metrics(score, label, 0.5, min_pred_size=0, min_gt_size=0)
    assert result["num_pred_components"] == 3
    assert result["siou"] == 1.0
    assert result["ppv"] == pytest.approx(1 / 3)
    # prediction over void only: ignored entirely
    score_void = np.zeros((20, 40))
    score_void[5:15, 5:15] = 1
    score_void[:, 20] = 1
    assert component_metrics(score_void, label, 0.5, 0, 0)["ppv"] == 1.0


def test_component_size_filters_and_one_pixel_components():
    label = np.zeros((40, 40), np.uint8)
    label[5:15, 5:15] = 1                   # 100 px
    label[30, 30] = 1                       # 1 px GT component
    score = label.astype(np.float64)
    score[20:23, 5:8] = 1                   # 9 px false positive
    # defaults-like sizes: the 9 px prediction and the 1 px GT (and its 1 px prediction) vanish
    result = component_metrics(score, label, 0.5, min_pred_size=10, min_gt_size=2)
    assert (result["num_gt_components"], result["num_pred_components"]) == (1, 1)
    assert result["siou"] == result["ppv"] == result["f1"] == 1.0
    # nothing filtered: one-pixel GT matched by a one-pixel prediction, the 9 px blob a false positive
    result = component_metrics(score, label, 0.5, min_pred_size=0, min_gt_size=0)
    assert (result["num_gt_components"], result["num_pred_components"]) == (2, 3)
    assert result["siou"] == 1.0 and result["ppv"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    # a predicted component of exactly min_pred_size pixels is kept (SMIYC drops size < min)
    assert component_metrics(score, label, 0.5, min_pred_size=9, min_gt_size=2)["num_pred_components"] == 2


def test_component_eight_connectivity_and_strict_threshold():
    label = np.zeros((10, 10), np.uint8)
    label[2, 2] = label[3, 3] = 1           # diagonal neighbours: one component
    score = np.zeros((10, 10))
    score[2, 2] = score[3, 3] = 0.5         # equal to the threshold: not predicted
    result = component_metrics(score, label, 0.5, 0, 0)
    assert result["num_gt_components"] == 1 and result["num_pred_components"] == 0
    assert result["siou"] == 0.0 and np.isnan(result["ppv"]) and result["f1"] == 0.0


def test_component_empty_sets():
    label = np.zeros((10, 10), np.uint8)
    nothing = component_metrics(np.zeros((10, 10)), label, 0.5, 0, 0)
    assert np.isnan(nothing["siou"]) and np.isnan(nothing["ppv"]) and np.isnan(nothing["f1"])
    false_alarm = component_metrics(np.ones((10, 10)), label, 0.5, 0, 0)
    assert np.isnan(false_alarm["siou"]) and false_alarm["ppv"] == 0.0 and false_alarm["f1"] == 0.0


def test_component_mean_over_all_components_of_the_dataset():
    one = square(np.zeros((30, 30), np.uint8), 5, 5, 5)
    three = np.zeros((30, 30), np.uint8)
    for left in (1, 11, 21):
        square(three, 10, left, 5)
    result = component_metrics([one.astype(float), np.zeros((30, 30))], [one, three], 0.5, 0, 0)
    assert result["num_gt_components"] == 4
    assert result["siou"] == pytest.approx(1 / 4)  # not the per-image mean 1/2


def reference_component_scores(score, label, threshold, min_pred_size, min_gt_size):
    """The SMIYC paper definitions, written with explicit pixel sets per component."""
    structure = np.ones((3, 3), int)
    void = ~np.isin(label, (0, 1))
    gt, num_gt = ndimage.label(label == 1, structure)
    pred, num_pred = ndimage.label((score > threshold) & ~void, structure)
    for k in range(1, num_pred + 1):
        if (pred == k).sum() < min_pred_size:
            pred[pred == k] = 0
    for k in range(1, num_gt + 1):
        if (gt == k).sum() < min_gt_size:
            void |= gt == k
            gt[gt == k] = 0
    siou, ppv = [], []
    for k in range(1, num_gt + 1):
        component = (gt == k) & ~void
        if not component.any():
            continue
        hits = set(np.unique(pred[component])) - {0}
        predicted = np.isin(pred, list(hits)) & ~void
        other_gt = predicted & (gt > 0) & (gt != k)
        siou.append((component & predicted).sum() / ((component | predicted) & ~other_gt).sum())
    for k in range(1, num_pred + 1):
        component = (pred == k) & ~void
        if component.any():
            ppv.append((component & (gt > 0)).sum() / component.sum())
    return np.array(siou), np.array(ppv)


def test_component_metrics_match_reference_definition_on_random_blobs():
    rng = np.random.default_rng(3)
    scores, labels, sious, ppvs = [], [], [], []
    for _ in range(6):
        label = (ndimage.gaussian_filter(rng.random((60, 80)), 3) > 0.53).astype(np.uint8)
        label[rng.random((60, 80)) < 0.03] = 255
        label[:, 40:42] = 255
        score = ndimage.gaussian_filter(rng.random((60, 80)), 2) + 0.05 * (label == 1)
        siou, ppv = reference_component_scores(score, label, 0.52, 15, 8)
        scores.append(score), labels.append(label), sious.append(siou), ppvs.append(ppv)
    siou, ppv = np.concatenate(sious), np.concatenate(ppvs)
    assert siou.size > 10 and ppv.size > 10
    f1 = [2 * (siou >= t).sum() / (2 * (siou >= t).sum() + (siou < t).sum() + (ppv < t).sum())
          for t in SIOU_THRESHOLDS]
    result = component_metrics(scores, labels, 0.52, min_pred_size=15, min_gt_size=8)
    assert (result["num_gt_components"], result["num_pred_components"]) == (siou.size, ppv.size)
    assert result["siou"] == pytest.approx(siou.mean(), abs=1e-12)
    assert result["ppv"] == pytest.approx(ppv.mean(), abs=1e-12)
    assert result["f1"] == pytest.approx(np.mean(f1), abs=1e-12)


def test_component_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        component_metrics(np.zeros((2, 3)), np.zeros((2, 2), np.uint8), 0.5)
    with pytest.raises(ValueError, match="expected H×W"):
        component_metrics(np.zeros(3), np.zeros(3, np.uint8), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        component_metrics(np.full((2, 2), np.nan), np.zeros((2, 2), np.uint8), 0.5)
    with pytest.raises(ValueError, match="finite"):
        ComponentMetricAccumulator(np.nan)
    with pytest.raises(ValueError, match="min_pred_size must be a non-negative integer"):
        ComponentMetricAccumulator(0.5, min_pred_size=-1)


# ----------------------------------------------------------------------------- mIoU

def test_miou_hand_computed_with_ignore_and_absent_class():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 3]])
    result = miou(pred, gt, num_classes=5)
    # class 0: TP 1, FP 1 (gt 2), FN 1 (pred 1) → 1/3; class 1: 2/3; class 2: 1/2; 3, 4 absent (ignored pixels)
    np.testing.assert_allclose(result["iou"], [1 / 3, 2 / 3, 1 / 2, np.nan, np.nan])
    assert result["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # a class predicted but absent from GT counts as IoU 0
    assert miou(np.array([3, 0]), np.array([0, 0]), num_classes=5)["iou"][3] == 0.0


def test_miou_streaming_matches_sklearn_confusion_matrix():
    rng = np.random.default_rng(4)
    preds = [rng.integers(0, 19, size=(8, 9)) for _ in range(3)]
    gts = [np.where(rng.random((8, 9)) < 0.1, 255, rng.integers(0, 19, size=(8, 9))).astype(np.uint8)
           for _ in range(3)]
    confusion = ConfusionMatrix(19, 255)
    for p, g in zip(preds, gts):
        confusion.update(p, g)
    p_all, g_all = np.concatenate([p.ravel() for p in preds]), np.concatenate([g.ravel() for g in gts])
    keep = g_all != 255
    np.testing.assert_array_equal(confusion.matrix, confusion_matrix(g_all[keep], p_all[keep], labels=range(19)))
    assert confusion.compute()["miou"] == miou(preds, gts)["miou"]


def test_miou_bad_input():
    with pytest.raises(ValueError, match=r"prediction has ids \[19\]"):
        miou(np.array([19, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match=r"ground truth has ids \[30\]"):
        miou(np.array([1, 0]), np.array([30, 0]))
    with pytest.raises(ValueError, match="at least one labelled pixel"):
        miou(np.array([1, 0]), np.array([255, 255]))
    with pytest.raises(ValueError, match="integer class ids"):
        miou(np.array([1.0]), np.array([1]))
    with pytest.raises(ValueError, match="is a class id"):
        ConfusionMatrix(19, ignore_index=3)
