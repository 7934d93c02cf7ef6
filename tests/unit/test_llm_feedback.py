"""A language model learns from production: the corrections received for its captured
answers become training rows of a retraining run (through the frozen holdout), and the
monitoring job publishes its production quality (the correction rate, the mean rating, the
project's scorers against the corrections), each with its noise band, an alarm only past it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.deployment import quality_alarm_requests
from chalicelib.domain.project import ConfigError, normalise_config
from chalicelib.domain.states import RunState
from tests.unit.test_machine import make_run
from tests.unit.test_prepare import run, write_jsonl
from training import drift, quality, scoring, spec
from tuneloop import synthetic

ASKED = synthetic.EXTRACTION_INSTRUCTION


def exchange(asked: Any, answer: str, inference_id: str, when: str) -> str:
    """A capture record as SageMaker writes it for a language model's endpoint."""
    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "application/json", "mode": "INPUT", "data": json.dumps(asked),
                              "encoding": "JSON"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": json.dumps({"generated_text": answer}), "encoding": "JSON"},
        },
        "eventMetadata": {"eventId": f"e-{inference_id}", "inferenceId": inference_id, "inferenceTime": when},
        "eventVersion": "0",
    })  # fmt: skip


def conversation(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": ASKED + text}], "parameters": {"max_new_tokens": 40}}


def test_a_retraining_run_learns_from_corrections(tmp_path: Path) -> None:
    """Each corrected request becomes a row: the conversation answered with the correction
    (a prompt sent as inputs: prompt and completion). A rating or a preference is not a
    row, a request the dataset already asks counts once, an id nobody captured is counted;
    the rows split like any other and join the holdout."""
    dataset = synthetic.extraction_rows(60)
    write_jsonl(tmp_path / "in" / "orders.jsonl", dataset)
    production = tmp_path / "production"
    lines, feedback = [], []
    for n in range(30):
        text, order = synthetic.order(__import__("random").Random(1000 + n))
        lines.append(exchange(conversation(text), '{"customer": "?"}', f"req-{n}", f"2026-12-01T10:{n:02d}:00Z"))
        feedback.append({"inference_id": f"req-{n}", "completion": json.dumps(order)})
    already = dataset[0]["messages"][0]["content"]
    lines.append(exchange({"messages": [{"role": "user", "content": already}]}, "?", "req-dup", "2026-12-01T11:00:00Z"))
    lines.append(exchange({"inputs": "Name a colour."}, "Blue", "req-plain", "2026-12-01T11:01:00Z"))
    lines.append(exchange(conversation("rated only"), "{}", "req-rated", "2026-12-01T11:02:00Z"))
    write_jsonl(production / "capture" / "tl-orders" / "AllTraffic" / "00.jsonl", lines)
    feedback += [{"inference_id": "req-dup", "completion": "{}"}, {"inference_id": "req-plain", "completion": "Red"},
                 {"inference_id": "req-rated", "rating": 2}, {"inference_id": "req-1", "preferred_over": "req-2"},
                 {"inference_id": "req-ghost", "completion": "x"}]  # fmt: skip
    write_jsonl(production / "labels" / "d1.jsonl", feedback)
    code, report = run(tmp_path, "--task", "causal-lm", "--production-dir", str(production))
    assert code == 0, report
    made = report["production"]
    assert (made["rows"], made["duplicates"], made["unknown_ids"], made["joined"]) == (31, 1, 1, 32), made
    rows = [json.loads(x) for name in ("train", "validation", "test")
            for x in (tmp_path / "out" / name / f"{name}.jsonl").read_text().splitlines()]  # fmt: skip
    learned = {r["inference_id"]: r for r in rows if r.get("source") == "production"}
    assert learned["req-plain"]["prompt"] == "Name a colour." and learned["req-plain"]["completion"] == "Red"
    first = learned["req-0"]["messages"]
    assert first[0]["role"] == "user" and first[-1] == {"role": "assistant", "content": feedback[0]["completion"]}
    assert "req-rated" not in learned and "req-dup" not in learned
    test_rows = [r for r in rows if r.get("source") == "production"][-made["splits"]["test"] :]
    assert made["splits"]["test"] > 0 and len(test_rows) == made["splits"]["test"]
    held = set((tmp_path / "out" / "holdout" / "run.keys").read_text().split())
    tested = [json.loads(x) for x in (tmp_path / "out" / "test" / "test.jsonl").read_text().splitlines()]
    assert {spec.row_key(r, "causal-lm") for r in tested if r.get("source")} <= held


def monitoring_inputs(tmp_path: Path, corrected: int, rated: dict[int, int]) -> Path:
    """40 answered conversations; ``corrected`` of them corrected (the right order, where the
    model answered with the city left out), ``rated`` {request: rating}."""
    import random

    inputs = tmp_path / "in"
    rows = synthetic.extraction_rows(40)
    write_jsonl(inputs / "baseline" / "train" / "train.jsonl", rows)
    (inputs / "baseline" / "profile").mkdir(parents=True)
    (inputs / "baseline" / "profile" / "profile.json").write_text(json.dumps({"task": "causal-lm"}))
    lines, feedback = [], []
    for n in range(40):
        text, order = synthetic.order(random.Random(2000 + n))
        answer = json.dumps({**order, "city": ""})
        lines.append(exchange(conversation(text), answer, f"req-{n}", f"2026-12-01T10:{n:02d}:00Z"))
        if n < corrected:
            feedback.append({"inference_id": f"req-{n}", "completion": json.dumps(order)})
    feedback += [{"inference_id": f"req-{n}", "rating": r} for n, r in rated.items()]
    feedback.append({"inference_id": "req-ghost", "rating": 5})
    write_jsonl(inputs / "capture" / "tl-orders" / "AllTraffic" / "00.jsonl", lines)
    write_jsonl(inputs / "labels" / "d1.jsonl", feedback)
    return inputs


def monitor(tmp_path: Path, inputs: Path, limits: dict[str, float], min_labels: int = 10) -> dict[str, Any]:
    generation = {"scorers": ["exact_match", "token_f1"]}
    args = ["--input-dir", str(inputs), "--output-dir", str(tmp_path / "out"), "--failure-dir", str(tmp_path / "f"),
            "--project", "orders", "--endpoint", "tl-orders", "--run-id", "aaaaaaaaaaaa", "--no-publish",
            "--min-labels", str(min_labels), "--task", "causal-lm", "--generation", json.dumps(generation),
            "--quality-thresholds", json.dumps(limits)]  # fmt: skip
    assert drift.main(args) == 0, (tmp_path / "f" / "failure").read_text()
    result: dict[str, Any] = json.loads((tmp_path / "out" / "drift.json").read_text())["quality"]
    return result


def test_the_monitoring_job_measures_a_language_models_production_quality(tmp_path: Path) -> None:
    """20 of 40 answers corrected, 12 rated: the correction rate is 0.5, the rating the mean
    scaled to 0-1, each scorer the answer given against its correction; a ceiling of 0.2 on
    the correction rate is passed by more than the noise, so the alarm's metric is published
    as measured, and a floor the rating is within noise of is published at the floor."""
    rated = {n: 2 if n % 2 else 3 for n in range(12)}
    result = monitor(tmp_path, monitoring_inputs(tmp_path, 20, rated),
                     {"production_correction_rate": 0.2, "production_rating": 0.4})  # fmt: skip
    metrics = result["metrics"]
    rate = metrics["production_correction_rate"]
    assert (
        rate["value"] == pytest.approx(0.5) and 0 < rate["noise"] < 0.3 and rate["below"] and rate["published"] == 0.5
    )
    assert metrics["production_rating"]["value"] == pytest.approx(((2 - 1) / 4 + (3 - 1) / 4) / 2)
    assert not metrics["production_rating"]["below"] and metrics["production_rating"]["published"] == 0.4
    # Every answer left the city out: never an exact match, a token F1 well above 0.
    assert metrics["production_exact_match"]["value"] == 0.0
    assert 0.5 < metrics["production_token_f1"]["value"] < 1.0
    assert result["below"] == ["production_correction_rate"]
    feedback = result["feedback"]
    assert (feedback["corrections"], feedback["ratings"], feedback["unknown_ids"], feedback["answers"]) == (
        20,
        12,
        1,
        40,
    )


def test_too_little_feedback_publishes_no_quality_and_says_so(tmp_path: Path) -> None:
    result = monitor(tmp_path, monitoring_inputs(tmp_path, 3, {1: 5}), {"production_correction_rate": 0.2}, 30)
    assert "production_rating" not in result["metrics"] and "production_token_f1" not in result["metrics"]
    assert "1 ratings, 3 corrections; 30 of each are needed" in result["note"], result
    assert result["below"] == []


def test_a_ceiling_within_noise_is_no_alarm() -> None:
    """Six corrections in 40 answers (0.15) under a ceiling of 0.1: within the sample's
    noise, published clipped to the ceiling; far more answers at the same rate: an alarm."""
    few = quality.limit_entry(0.15, quality.mean_band([1.0] * 6 + [0.0] * 34), 0.1, higher=False)
    assert not few["below"] and few["published"] == 0.1
    many = quality.limit_entry(0.15, quality.mean_band([1.0] * 600 + [0.0] * 3400), 0.1, higher=False)
    assert many["below"] and many["published"] == 0.15


def test_language_model_quality_limits_are_checked_and_alarm_in_their_direction() -> None:
    base = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "task": "causal-lm",
            "generation": {"scorers": ["exact_match", "token_f1"]}}  # fmt: skip
    limits = {"production_correction_rate": 0.3, "production_rating": 0.5, "production_token_f1": 0.6}
    config = normalise_config({**base, "quality": {"thresholds": limits}})
    alarms = {a["MetricName"]: a for a in quality_alarm_requests(make_run(RunState.DEPLOYED, config))}
    assert alarms["production_correction_rate"]["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarms["production_correction_rate"]["Statistic"] == "Maximum"
    assert alarms["production_token_f1"]["ComparisonOperator"] == "LessThanThreshold"
    for bad, needle in (
        ({"production_macro_f1": 0.5}, "not measured for causal-lm"),
        ({"production_rouge_l": 0.5}, "'rouge_l' is not scored"),
        ({"production_corection_rate": 0.5}, "not a production metric"),
    ):
        with pytest.raises(ConfigError, match=needle):
            normalise_config({**base, "quality": {"thresholds": bad}})
    with pytest.raises(ConfigError, match="not measured for text-classification"):
        normalise_config({"base_model": "sentence-transformers/all-MiniLM-L6-v2", "task": "text-classification",
                          "quality": {"thresholds": {"production_rating": 0.5}}})  # fmt: skip


def test_exchanges_read_conversations_prompts_and_what_was_answered(tmp_path: Path) -> None:
    lines = [exchange(conversation("x"), "a", "r1", "t1"), exchange({"inputs": "p"}, "b", "r2", "t2"),
             exchange({"inputs": ["p", "q"]}, "c", "r3", "t3")]  # fmt: skip
    write_jsonl(tmp_path / "c" / "00.jsonl", lines)
    found = list(quality.exchanges(tmp_path / "c"))
    assert [(e.inference_id, e.answer) for e in found] == [("r1", "a"), ("r2", "b")]  # a batch is no one request
    assert found[0].row("y")["messages"][-1] == {"role": "assistant", "content": "y"}
    assert found[1].row("y") == {"prompt": "p", "completion": "y"}
    assert scoring.scorer("exact_match")("a", "a") == 1.0
    # A caller that reused an id: feedback for it cannot say which request it is about.
    write_jsonl(tmp_path / "c" / "01.jsonl", [exchange({"inputs": "other"}, "d", "r1", "t4")])
    unique, reused = quality.unique_exchanges(quality.exchanges(tmp_path / "c"))
    assert set(unique) == {"r2"} and reused == {"r1"}
