"""evaluate.py's metrics equal scikit-learn's on fixed predictions."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

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


def test_reliability_bins_are_what_the_ece_sums() -> None:
    from training.spec import reliability

    truth = [0, 0, 1, 1, 0]
    probabilities = [[0.95, 0.05], [0.91, 0.09], [0.92, 0.08], [0.35, 0.65], [0.4, 0.6]]
    bins = reliability(truth, probabilities)
    assert [(b["low"], b["high"], b["count"]) for b in bins] == [(0.6, 0.7, 2), (0.9, 1.0, 3)]
    assert bins[0]["confidence"] == pytest.approx(0.625) and bins[0]["accuracy"] == pytest.approx(0.5)
    assert bins[1]["confidence"] == pytest.approx((0.95 + 0.91 + 0.92) / 3)
    assert bins[1]["accuracy"] == pytest.approx(2 / 3)
    expected = 2 / 5 * abs(0.5 - 0.625) + 3 / 5 * abs(2 / 3 - (0.95 + 0.91 + 0.92) / 3)
    assert expected_calibration_error(truth, probabilities) == pytest.approx(expected)


def classified(truth: list[int], pred: list[int], classes: int) -> dict[str, object]:
    import numpy as np

    return {"truth": np.asarray(truth), "pred": np.asarray(pred), "classes": classes}


def test_the_bootstrap_macro_f1_equals_the_metric_on_the_full_sample() -> None:
    from training.evaluate import _value

    rng = random.Random(3)
    y_true = [rng.randrange(4) for _ in range(300)]
    y_pred = [t if rng.random() < 0.6 else rng.randrange(4) for t in y_true]
    rows = classified(y_true, y_pred, 4)
    assert _value("macro_f1", rows) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert _value("accuracy", rows) == pytest.approx(accuracy_score(y_true, y_pred))


def test_the_interval_has_the_width_sampling_theory_gives() -> None:
    """Accuracy 0.8 on 265 rows: the normal approximation's 95% half-width is 0.048."""
    from training.evaluate import bootstrap

    y_true = [0] * 265
    y_pred = [0] * 212 + [1] * 53
    low, high = bootstrap("accuracy", classified(y_true, y_pred, 2), resamples=2000)["interval"]
    assert low < 0.8 < high
    assert (high - low) / 2 == pytest.approx(1.96 * (0.8 * 0.2 / 265) ** 0.5, rel=0.15)


def test_the_paired_difference_separates_a_regression_from_noise() -> None:
    from training.evaluate import bootstrap

    rng = random.Random(5)
    y_true = [rng.randrange(6) for _ in range(265)]
    champion = [t if rng.random() < 0.9 else (t + 1) % 6 for t in y_true]
    # The same model: the paired difference is exactly 0 on every resample.
    same = bootstrap("macro_f1", classified(y_true, champion, 6), classified(y_true, champion, 6))
    assert same["difference_interval"] == [0.0, 0.0]
    # Ten points worse: the whole interval is below 0.
    worse = [t if rng.random() < 0.8 else (t + 1) % 6 for t in y_true]
    result = bootstrap("macro_f1", classified(y_true, worse, 6), classified(y_true, champion, 6))
    assert result["difference_interval"][1] < 0
    # Two rows' difference: inside the noise, the interval spans 0.
    close = list(champion)
    close[0], close[1] = (y_true[0] + 1) % 6, (y_true[1] + 1) % 6
    low, high = bootstrap("macro_f1", classified(y_true, close, 6), classified(y_true, champion, 6))[
        "difference_interval"
    ]
    assert low < 0 <= high


def test_a_champion_label_outside_the_challengers_counts_as_wrong() -> None:
    ours = classification_metrics([0, 1, 1], [0, -1, 1], None, ["a", "b"])
    assert ours["accuracy"] == pytest.approx(2 / 3)
    assert ours["per_class"]["b"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert "ece" not in ours


def test_held_out_production_rows_are_measured_on_their_own() -> None:
    from training.evaluate import production_subset

    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y", "source": "production",
            "inference_time": "2026-12-01T10:00:00Z"}, {"text": "c", "label": "y", "source": "production",
            "inference_time": "2026-12-01T09:00:00Z"}]  # fmt: skip
    ours = {"truth": [0, 1, 1], "pred": [0, 1, 0], "classes": 2}
    theirs = {"truth": [0, 1, 1], "pred": [1, 0, 0], "classes": 2}
    subset = production_subset(rows, ours, theirs, ["x", "y"])
    assert subset is not None and subset["examples"] == 2
    assert subset["challenger"]["accuracy"] == 0.5 and subset["champion"]["accuracy"] == 0.0
    assert subset["window"] == {"first": "2026-12-01T09:00:00Z", "last": "2026-12-01T10:00:00Z"}
    assert production_subset(rows[:1], ours, theirs, ["x", "y"]) is None


def test_a_first_model_that_predicts_only_the_majority_class_is_rejected(tmp_path: Path) -> None:
    """The issue's first model: six classes, 26 test rows, a model that answers the largest
    class for every row (accuracy = that class's share). Against the majority-class
    predictor of its training split it differs on no row, so the gate rejects it, naming
    the baseline and both numbers; a model that learned something passes."""
    from chalicelib.domain.machine import gate_verdict
    from chalicelib.domain.project import normalise_config
    from chalicelib.sagemaker import evaluation_event
    from training.evaluate import EvaluationError, majority_baseline, paired

    labels = ["billing", "delivery", "other", "praise", "refund", "technical"]
    truth = [0] * 10 + [1] * 4 + [2] * 3 + [3] * 3 + [4] * 3 + [5] * 3
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"labels": {"train": {"billing": 92, "delivery": 37, "other": 28, "praise": 28,
                                                        "refund": 28, "technical": 27}}}))  # fmt: skip
    config = normalise_config({"base_model": "sentence-transformers/all-MiniLM-L6-v2", "task": "text-classification"})

    def gate(pred: list[int]) -> tuple[bool, str, dict[str, Any]]:
        ours = {"truth": truth, "pred": pred, "classes": len(labels)}
        baseline, what = majority_baseline(profile, ours, labels)
        measured = classification_metrics(truth, pred, None, labels)
        comparison = {"against": what, **paired("macro_f1", ours, baseline, list(range(len(truth))), 0.95, 1000, 0)}
        evaluation = {"summary": {k: measured[k] for k in ("accuracy", "macro_f1")}, "champion": None,
                      "baseline": comparison}  # fmt: skip
        passed, why = gate_verdict(config, evaluation_event(json.loads(json.dumps(evaluation)), "e", "r"))
        return passed, why, comparison

    passed, why, comparison = gate([0] * len(truth))
    assert comparison["differing_rows"] == 0 and comparison["difference"] == 0.0
    assert not passed, why
    assert "vs the majority-class predictor ('billing', 38% of the training split)" in why
    assert "not better than the baseline beyond noise" in why
    # Learned most rows of every class: better beyond noise, and registered.
    learned = [t if i % 5 else (t + 1) % len(labels) for i, t in enumerate(truth)]
    passed, why, _ = gate(learned)
    assert passed and "better beyond noise" in why, why
    # No profile, no baseline: nothing is promoted on a comparison that was never made.
    with pytest.raises(EvaluationError, match="label counts are unknown"):
        majority_baseline(tmp_path / "missing.json", {"truth": truth, "pred": truth, "classes": 6}, labels)
    passed, why = gate_verdict(config, evaluation_event({"summary": {"macro_f1": 0.9}, "champion": None,
                                                         "baseline": {"error": "no profile"}}, "e", "r"))  # fmt: skip
    assert not passed and "no profile; a first model must beat one" in why, why
