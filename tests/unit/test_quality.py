"""quality.py: the join of captured predictions with labels, the measured metrics and their
noise band, and the CBPE estimate against a model that is calibrated by construction."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from sklearn.metrics import f1_score

from training import drift, quality
from training.quality import Prediction

CLASSES = ["negative", "positive"]


def prediction(n: int, label: str = "positive", confidence: float = 0.9) -> Prediction:
    return Prediction(f"text {n}", label, confidence, f"id-{n}")


def label(n: int | str, value: str, received: str = "2026-12-01T10:00:00Z") -> dict[str, str]:
    return {"inference_id": n if isinstance(n, str) else f"id-{n}", "label": value, "received_at": received}


def test_the_join_counts_what_it_cannot_use() -> None:
    window = [prediction(n) for n in range(6)]
    labels = [
        label(0, "positive"),
        label(1, "negative"),
        label(1, "negative"),  # the same label again: a repeat
        label(2, "positive"),
        label(2, "negative"),  # a correction, received later: it wins
        label("nobody", "positive"),  # no captured request has this id
        label(3, "neutral"),  # a label the model does not know
        label("old", "positive"),  # captured before the window
        label("many", "positive"),  # a request of several texts
    ]
    joined = quality.join(window, labels, CLASSES, earlier_ids={"old"}, unjoinable_ids={"many"})
    assert {p.inference_id: truth for p, truth in joined.pairs} == {"id-0": "positive", "id-1": "negative",
                                                                      "id-2": "negative"}  # fmt: skip
    summary = joined.summary(len(window))
    assert (summary["repeats"], summary["conflicts"], summary["unknown_ids"]) == (1, 1, 1)
    assert summary["unknown_labels"] == {"neutral": 1} and summary["outside_window"] == 1
    assert summary["unjoinable_requests"] == 1 and summary["coverage"] == pytest.approx(3 / 6)


def test_late_labels_join_whenever_they_arrive(tmp_path: Path) -> None:
    """Labels are read oldest received first, whatever file they are in: a correction that
    arrives in a later delivery wins; rows that are not labels are counted, not used."""
    (tmp_path / "b.jsonl").write_text(json.dumps(label(1, "positive", "2026-12-01T09:00:00Z")) + "\n")
    (tmp_path / "a.jsonl").write_text(
        json.dumps(label(1, "negative", "2026-12-02T09:00:00Z")) + "\n{broken\n" + json.dumps({"label": "x"}) + "\n"
    )
    rows, invalid = quality.read_labels(tmp_path)
    assert [r["label"] for r in rows] == ["positive", "negative"] and invalid == 2
    joined = quality.join([prediction(1)], rows, CLASSES)
    assert [truth for _, truth in joined.pairs] == ["negative"] and joined.conflicts == 1
    assert quality.read_labels(tmp_path / "none") == ([], 0)


@pytest.mark.parametrize("seed", range(3))
def test_measured_metrics_match_scikit_learn(seed: int) -> None:
    rng = random.Random(seed)
    pairs = [(rng.choice(CLASSES), rng.choice(CLASSES)) for _ in range(80)]
    assert quality.accuracy(pairs) == pytest.approx(sum(p == t for p, t in pairs) / 80)
    truth, predicted = [t for _, t in pairs], [p for p, _ in pairs]
    assert quality.macro_f1(pairs, CLASSES) == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert math.isnan(quality.accuracy([]))


def test_a_floor_alarms_only_beyond_the_sample_noise() -> None:
    """Ten labels at 60% accuracy against a 0.8 floor: noise at that size, published clipped
    to the floor. Five hundred at 60%: a real drop, published as measured."""
    rng = random.Random(0)

    def window(n: int) -> tuple[list[Prediction], list[dict[str, str]]]:
        predictions = [prediction(i, "positive") for i in range(n)]
        labels = [label(i, "positive" if rng.random() < 0.6 else "negative") for i in range(n)]
        return predictions, labels

    floors = {"production_accuracy": 0.8}
    few = quality.quality(*window(10), CLASSES, floors, min_labels=5)
    entry = few["metrics"]["production_accuracy"]
    assert entry["value"] < 0.8 <= entry["value"] + entry["noise"], entry
    assert entry["published"] == 0.8 and not entry["below"] and few["below"] == []
    many = quality.quality(*window(500), CLASSES, floors, min_labels=5)
    entry = many["metrics"]["production_accuracy"]
    assert entry["value"] + entry["noise"] < 0.8 and entry["published"] == entry["value"]
    assert many["below"] == ["production_accuracy"]
    # Below min_labels nothing is measured (and so nothing alarms); the estimate still is.
    none = quality.quality(*window(4), CLASSES, floors, min_labels=5)
    assert "production_accuracy" not in none["metrics"] and "estimated_accuracy" in none["metrics"]
    assert "4 labelled predictions" in none["note"]


@pytest.mark.parametrize("seed", range(4))
def test_cbpe_estimates_a_calibrated_models_accuracy(seed: int) -> None:
    """A model calibrated by construction: each prediction is right with probability equal
    to its confidence. The mean confidence estimates the accuracy within its band."""
    rng = random.Random(seed)
    confidences = [rng.uniform(0.5, 1.0) for _ in range(2000)]
    correct = [rng.random() < c for c in confidences]
    estimated, band = quality.estimate(confidences)
    realised = sum(correct) / len(correct)
    # The band is one-sided 95% (1.645 sd): a two-sided 99.9% check is about 2 bands.
    assert abs(estimated - realised) <= 2 * band, (estimated, realised, band)
    assert 0.005 < band < 0.02
    # An over-confident model (true accuracy 20 points lower) is outside that band.
    assert estimated - (realised - 0.2) > 2 * band


def capture(text: str, answer: Any, event_id: str, inference_id: str | None, when: str = "2026-12-01T10:00:00Z") -> str:
    metadata = {"eventId": event_id, "inferenceTime": when}
    if inference_id:
        metadata["inferenceId"] = inference_id
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "application/json", "mode": "INPUT", "data": json.dumps(text),
                              "encoding": "JSON"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": json.dumps(answer), "encoding": "JSON"},
        },
        "eventMetadata": metadata,
        "eventVersion": "0",
    })  # fmt: skip


def test_the_monitoring_job_joins_capture_and_labels(tmp_path: Path) -> None:
    from tests.unit.test_drift import ROWS, profile_of

    inputs = tmp_path / "in"
    for folder in ("baseline/profile", "baseline/train", "capture/tl-demo/AllTraffic", "labels"):
        (inputs / folder).mkdir(parents=True)
    (inputs / "baseline/profile/profile.json").write_text(json.dumps(profile_of(ROWS[:160])))
    (inputs / "baseline/train/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:160]))
    lines, labels = [], []
    for n, row in enumerate(ROWS[160:200]):
        # The model answers "positive" to everything, at 0.7 confidence.
        answer = {"label": "positive", "scores": {"positive": 0.7, "negative": 0.3}}
        caller_id = f"req-{n}" if n % 2 else None  # half the callers pass an InferenceId
        lines.append(capture(row["text"], answer, f"e-{n}", caller_id))
        labels.append({"inference_id": caller_id or f"e-{n}", "label": row["label"],
                       "received_at": "2026-12-01T11:00:00Z"})  # fmt: skip
    labels.append({"inference_id": "req-unknown", "label": "positive", "received_at": "2026-12-01T11:00:00Z"})
    (inputs / "capture/tl-demo/AllTraffic/00.jsonl").write_text("\n".join(lines) + "\n")
    (inputs / "labels/d1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    args = ["--input-dir", str(inputs), "--output-dir", str(tmp_path / "out"), "--failure-dir", str(tmp_path / "f"),
            "--project", "demo", "--endpoint", "tl-demo", "--run-id", "aaaaaaaaaaaa", "--no-publish",
            "--min-labels", "20",
            "--quality-thresholds", json.dumps({"production_accuracy": 0.9})]  # fmt: skip
    assert drift.main(args) == 0
    result = json.loads((tmp_path / "out" / "drift.json").read_text())["quality"]
    truth = [r["label"] for r in ROWS[160:200]]
    measured = truth.count("positive") / len(truth)
    assert result["metrics"]["production_accuracy"]["value"] == pytest.approx(measured)
    assert result["feedback"]["labelled"] == 40 and result["feedback"]["unknown_ids"] == 1
    assert result["metrics"]["estimated_accuracy"]["value"] == pytest.approx(0.7)
    assert result["estimate_vs_measured"]["production_accuracy"] == pytest.approx(measured)
    report = (tmp_path / "out" / "report.html").read_text()
    assert '<table id="quality">' in report and 'id="cbpe"' in report and "unknown ids: 1" in report
