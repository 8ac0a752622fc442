"""metrics: hand-checked values, and micro-F1 equal to accuracy for single-label predictions."""

from __future__ import annotations

import numpy as np
import pytest

from kgg.job.metrics import classification_metrics, confusion_matrix


def test_confusion_matrix_counts_true_rows_predicted_columns() -> None:
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_metrics_match_hand_computed_values() -> None:
    y_true = np.array([0, 0, 1, 2])
    y_pred = np.array([0, 1, 1, 1])
    result = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["micro_f1"] == pytest.approx(0.5)
    # a: P 1, R .5, F1 2/3; b: P 1/3, R 1, F1 .5; c: 0 -> macro (2/3 + 1/2) / 3
    assert result["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert result["per_class"]["c"]["f1"] == 0.0
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 3)


def test_micro_f1_equals_accuracy_for_single_label_predictions() -> None:
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 12, 500), rng.integers(0, 12, 500)
    result = classification_metrics(y_true, y_pred, [str(i) for i in range(12)])
    assert result["micro_f1"] == pytest.approx(result["accuracy"])
    assert result["accuracy"] == pytest.approx(float(np.mean(y_true == y_pred)))
