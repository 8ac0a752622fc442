"""Classification metrics in plain numpy: the Kaggle metric (micro-F1) and what explains it."""

from __future__ import annotations

from typing import Any

import numpy as np

from kgg.common.contract import METRIC_ID


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # Undefined precision/recall (no predictions / no samples of a class) count as 0, like sklearn.
    return np.divide(
        numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0
    )


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, micro-F1 (the competition metric), macro-F1, per-class P/R/F1, confusion matrix.

    For single-label predictions micro-F1 equals accuracy; both are reported because the
    competition names the former and people compare the latter."""
    n = len(class_names)
    matrix = confusion_matrix(y_true, y_pred, n)
    true_positives = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    tp, fp, fn = true_positives.sum(), (predicted - true_positives).sum(), (actual - true_positives)
    micro_precision = float(_safe_divide(np.array(tp), np.array(tp + fp)))
    micro_recall = float(_safe_divide(np.array(tp), np.array(tp + fn.sum())))
    micro_f1 = float(
        _safe_divide(
            np.array(2 * micro_precision * micro_recall), np.array(micro_precision + micro_recall)
        )
    )
    total = matrix.sum()
    return {
        "samples": int(total),
        "accuracy": float(tp / total) if total else 0.0,
        METRIC_ID: micro_f1,
        "macro_f1": float(f1.mean()) if n else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scores of one set without the per-class detail (metrics.json's `validation`)."""
    return {k: metrics[k] for k in ("samples", "accuracy", METRIC_ID, "macro_f1")}


def headline(metrics: dict[str, Any]) -> str:
    """The result in words, naming the set it was scored on and whether anything chose on it:
    `held-out micro-F1 0.9167 (accuracy 0.9167, macro-F1 0.9111) on 12 images ...`."""
    scored_on = metrics.get("scored_on", "validation")
    scores = (
        f"micro-F1 {metrics.get(METRIC_ID, float('nan')):.4f} (accuracy "
        f"{metrics.get('accuracy', float('nan')):.4f}, macro-F1 "
        f"{metrics.get('macro_f1', float('nan')):.4f}) on {metrics.get('samples', '?')} images"
    )
    validation = metrics.get("validation")
    if scored_on == "holdout" and isinstance(validation, dict):
        return (
            f"held-out {scores} that nothing was chosen on; validation micro-F1 "
            f"{validation.get(METRIC_ID, float('nan')):.4f} chose the epochs"
        )
    if isinstance(validation, dict) and validation.get("chose_epochs"):
        return f"validation {scores} (optimistic: they also chose the epochs; see --holdout)"
    return f"validation {scores}"
