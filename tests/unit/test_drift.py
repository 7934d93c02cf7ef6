"""drift.py: its statistics against scipy/scikit-learn, and the check on real-shaped samples."""

from __future__ import annotations

import html
import json
import random
from pathlib import Path
from typing import Any

import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import roc_auc_score

from training import drift, prepare

REPO = Path(__file__).resolve().parents[2]
ROWS = [json.loads(line) for line in (REPO / "examples/data/reviews.jsonl").read_text().splitlines()]
THRESHOLDS = {"prediction_psi": 0.2, "prediction_js": 0.1, "input_js": 0.1, "input_length_psi": 0.25}
OFF_TOPIC = [
    "The quarterly earnings call covered supply chain logistics in great depth",
    "Heat the oven, fold the butter into the flour and rest the dough overnight",
    "The striker volleyed home in extra time to settle the championship final",
    "Parliament debated the amendment to the fisheries regulation until midnight",
    "Mount the telescope on a stable tripod before aligning it with the pole star",
    "Migratory geese follow the river valley south when the first frosts arrive",
]


@pytest.mark.parametrize("seed", range(5))
def test_statistics_match_scipy_and_scikit_learn(seed: int) -> None:
    rng = random.Random(seed)
    p = [rng.random() for _ in range(6)]
    q = [rng.random() for _ in range(6)]
    assert drift.js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-9)
    assert drift.js_divergence(p, p) == pytest.approx(0, abs=1e-12)
    scores = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(60)]
    labels = [rng.randint(0, 1) for _ in range(60)]
    assert drift.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0


def profile_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    splits = {"train": [prepare.Row("train.jsonl", n, r) for n, r in enumerate(rows, 1)], "validation": [], "test": []}
    return prepare.profile(splits, "text-classification")


def live(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Traffic as the capture holds it: the text and the model's answer (a right one here)."""
    return [(r["text"], {"label": r["label"]}) for r in rows]


def test_held_out_traffic_from_the_training_distribution_is_not_drift() -> None:
    rows = ROWS[:]
    random.Random(7).shuffle(rows)
    train, held_out = rows[:160], rows[160:]
    result = drift.check(profile_of(train), [r["text"] for r in train], live(held_out), THRESHOLDS)
    assert result["drifted"] == [], json.dumps(result["metrics"], indent=1)
    assert result["samples"] == {"baseline": 160, "live": 80, "predictions": 80}


def off_topic_check() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The training rows, and the check of off-topic traffic (all predicted negative) against them."""
    rows = ROWS[:]
    random.Random(7).shuffle(rows)
    train = rows[:160]
    shifted = [(text, {"label": "negative"}) for text in OFF_TOPIC * 12]
    shifted += [(r["text"], {"label": r["label"]}) for r in rows[160:168]]
    return train, drift.check(profile_of(train), [r["text"] for r in train], shifted, THRESHOLDS)


def test_a_shifted_label_mix_and_topic_is_drift() -> None:
    _, result = off_topic_check()
    assert {"prediction_psi", "prediction_js", "input_js"} <= set(result["drifted"]), result["metrics"]
    assert result["metrics"]["prediction_psi"]["published"] == result["metrics"]["prediction_psi"]["value"]


def test_the_report_names_what_drifted() -> None:
    """Off-topic traffic: the domain classifier's live-side terms come from the off-topic
    texts, the label that gained share is named, and the typical live texts are off-topic."""
    train, result = off_topic_check()
    explanation = result["explanation"]
    off_topic_words = {w for text in OFF_TOPIC for w in drift._terms(text)}
    live_terms = [t["term"] for t in explanation["terms"]["live"]]
    assert len(live_terms) == 10 and set(live_terms) <= off_topic_words, live_terms
    assert all(t["live_share"] > t["baseline_share"] for t in explanation["terms"]["live"])
    assert explanation["terms"]["baseline"] and all(t["weight"] < 0 for t in explanation["terms"]["baseline"])
    top = explanation["labels"][0]
    assert top["label"] == "negative" and top["change"] > 0.3, explanation["labels"]
    assert all(text in OFF_TOPIC for text in explanation["examples"]["live"])
    assert all(text in [r["text"] for r in train] for text in explanation["examples"]["baseline"])
    report = drift.report_html(result, "demo", "tl-demo")
    assert '<div id="explanation">' in report and html.escape(live_terms[0]) in report


def test_a_tiny_sample_never_alarms_on_noise() -> None:
    train = ROWS[:160]
    # Five in-distribution texts: their word mix is far from the training mix on paper,
    # because five texts cannot cover a vocabulary; that distance is sampling noise.
    tiny = live(ROWS[200:205])
    result = drift.check(profile_of(train), [r["text"] for r in train], tiny, THRESHOLDS)
    words = result["metrics"]["input_js"]
    assert words["value"] > THRESHOLDS["input_js"] and words["value"] <= words["noise"], words
    assert words["published"] == THRESHOLDS["input_js"] and result["drifted"] == []


def capture_line(text: str, answer: Any) -> str:
    return json.dumps(
        {
            "captureData": {
                "endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                                  "data": json.dumps(text), "encoding": "JSON"},
                "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                   "data": json.dumps(answer), "encoding": "JSON"},
            },
            "eventMetadata": {"eventId": "e", "inferenceTime": "2026-11-27T10:00:00Z"},
            "eventVersion": "0",
        }
    )  # fmt: skip


def test_the_job_reads_capture_files_and_reports(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    (inputs / "baseline" / "profile").mkdir(parents=True)
    (inputs / "baseline" / "train").mkdir(parents=True)
    (inputs / "baseline" / "profile" / "profile.json").write_text(json.dumps(profile_of(ROWS[:160])))
    (inputs / "baseline" / "train" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:160]))
    hour = inputs / "capture" / "tl-demo" / "AllTraffic" / "2026" / "11" / "27" / "10"
    hour.mkdir(parents=True)
    lines = [capture_line(t, {"label": "negative"}) for t in OFF_TOPIC * 6]
    lines.append(capture_line({"inputs": ["a b", "c d"]}, [{"label": "negative"}, {"label": "negative"}]))
    (hour / "00-01.jsonl").write_text("\n".join(lines) + "\n")
    args = ["--input-dir", str(inputs), "--output-dir", str(tmp_path / "out"), "--failure-dir", str(tmp_path / "f"),
            "--project", "demo", "--endpoint", "tl-demo", "--run-id", "aaaaaaaaaaaa",
            "--thresholds", json.dumps(THRESHOLDS), "--no-publish"]  # fmt: skip
    assert drift.main(args) == 0
    result = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert result["samples"]["live"] == 38 and "prediction_psi" in result["drifted"]
    assert '<table id="drift">' in (tmp_path / "out" / "report.html").read_text()
    assert drift.main([*args, "--min-samples", "100"]) == 0
    assert "nothing published" in json.loads((tmp_path / "out" / "drift.json").read_text())["note"]
    (hour / "bad.jsonl").write_text("{not json\n")
    assert drift.main(args) == 1
    assert "bad.jsonl:1: not a SageMaker capture record" in (tmp_path / "f" / "failure").read_text()
