"""evaluate.py's metrics equal scikit-learn's on fixed predictions."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from training.evaluate import classification_metrics, expected_calibration_error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed: int) -> None:
    rng = random.Random(seed)
    labels = ["neg", "neu", "pos"]
    y_true = [rng.randrange(3) for _ in range(200)]
    y_pred = [t if rng.random() < 0.7 else rng.randrange(3) for t in y_true]
    probs = []
    for p in y_pred:
        row = [rng.random() * 0.3 for _ in range(3)]
        row[p] += 1.0
        total = sum(row)
        probs.append([v / total for v in row])
    ours = classification_metrics(y_true, y_pred, probs, labels)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert ours["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    for i, label in enumerate(labels):
        assert ours["per_class"][label]["precision"] == pytest.approx(precision[i])
        assert ours["per_class"][label]["recall"] == pytest.approx(recall[i])
        assert ours["per_class"][label]["f1"] == pytest.approx(f1[i])
        assert ours["per_class"][label]["support"] == support[i]
    assert ours["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()


def test_a_class_never_predicted_scores_zero() -> None:
    ours = classification_metrics([0, 1, 1], [0, 0, 0], [[1.0, 0.0]] * 3, ["a", "b"])
    assert ours["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert ours["macro_f1"] == pytest.approx(f1_score([0, 1, 1], [0, 0, 0], average="macro", zero_division=0))


def test_expected_calibration_error() -> None:
    # Perfectly calibrated at 0.75: three of four right at confidence 0.75 → ECE 0.
    assert expected_calibration_error([0, 0, 0, 1], [[0.75, 0.25]] * 4) == pytest.approx(0.0)
    # Always confident (1.0) and right half the time → ECE 0.5.
    assert expected_calibration_error([0, 1], [[1.0, 0.0], [1.0, 0.0]]) == pytest.approx(0.5)
