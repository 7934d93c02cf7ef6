"""Any JSON value, as an event: parsed into a domain event, or refused with one of the two
documented errors and a one-line reason. Nothing else is ever raised."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.domain import names
from chalicelib.events import MalformedEventError, UnknownEventError, parse_event
from chalicelib.intake import DatasetDrop, IntakeIgnored, parse_object_created
from tests.conftest import EVENTS

FIXTURES = {path.stem: json.loads(path.read_text()) for path in sorted(EVENTS.glob("*.json"))}

# Any string JSON can carry, lone surrogates ("\ud800") included.
texts = st.text(st.characters(exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document: object members and array items, at any depth."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found += paths(item, (*prefix, n))
    return found


@st.composite
def mutated_events(draw: st.DrawFn) -> Any:
    """A real-shaped fixture with a few of its fields replaced by any JSON value, or removed."""
    event = copy.deepcopy(FIXTURES[draw(st.sampled_from(sorted(FIXTURES)))])
    for _ in range(draw(st.integers(1, 3))):
        places = paths(event)
        if not places:
            break
        *parent, last = draw(st.sampled_from(places))
        target = event
        for part in parent:
            target = target[part]
        if draw(st.booleans()) and isinstance(target, dict):
            del target[last]
        else:
            target[last] = draw(json_values)
    return event


def check_domain_event(raw: Any) -> None:
    try:
        event = parse_event(raw)
    except (MalformedEventError, UnknownEventError) as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and len(reason) < 500, reason
        return
    assert event.time.tzinfo is not None
    assert isinstance(event.kind, str)
    assert event.run_id is None or names.RUN_ID_RE.match(event.run_id)
    resource = event.resource
    assert resource is None or (isinstance(resource, str) and 0 < len(resource.encode()) <= 1024)


def check_intake(raw: Any) -> None:
    try:
        drop = parse_object_created(raw)
    except (MalformedEventError, IntakeIgnored) as exc:
        reason = str(exc)
        assert reason and "\n" not in reason, reason
        return
    assert isinstance(drop, DatasetDrop)
    assert names.RUN_ID_RE.match(drop.idempotency_key)
    assert drop.time.tzinfo is not None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_is_parsed_or_refused(raw: Any) -> None:
    check_domain_event(raw)
    check_intake(raw)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_real_events_with_any_field_changed_are_parsed_or_refused(raw: Any) -> None:
    check_domain_event(raw)
    check_intake(raw)


def test_the_shapes_seen_in_the_field_are_refused_with_a_reason() -> None:
    training = copy.deepcopy(FIXTURES["training_job_completed"])
    training["detail"]["ModelArtifacts"] = "s3://bucket/model.tar.gz"
    try:
        parse_event(training)
    except MalformedEventError as exc:
        assert "detail.ModelArtifacts" in str(exc)
    else:
        raise AssertionError("a string ModelArtifacts was accepted")
    for field, value in (("bucket", "tuneloop-test"), ("object", ["datasets/demo/ds/x.jsonl"])):
        drop = copy.deepcopy(FIXTURES["s3_object_created"])
        drop["detail"][field] = value
        try:
            parse_object_created(drop)
        except MalformedEventError as exc:
            assert f"detail.{field}" in str(exc)
        else:
            raise AssertionError(f"a {type(value).__name__} {field} was accepted")


def test_a_key_that_is_not_a_plain_word_is_quoted_in_the_one_line_reason() -> None:
    tuning = copy.deepcopy(FIXTURES["tuning_job_completed"])
    for key in ("\n", "a" * 5000, "\udc80", "x.y"):
        tuning["detail"]["TrainingJobStatusCounters"] = {key: False}
        with pytest.raises(MalformedEventError) as caught:
            parse_event(tuning)
        reason = str(caught.value)
        assert reason.startswith('detail.TrainingJobStatusCounters["'), reason
        assert "\n" not in reason and len(reason) < 200, reason
        reason.encode("utf-8")


EVALUATION = {
    "summary": {"accuracy": 0.9, "macro_f1": 0.88, "ece": 0.05, "examples": 265},
    "champion": {"accuracy": 0.91, "macro_f1": 0.9, "ece": 0.04, "examples": 265},
    "champion_run_id": "cccccccccccc",
    "comparison": {
        "metric": "macro_f1", "better": "higher", "challenger": 0.88, "champion": 0.9, "difference": -0.02,
        "difference_interval": [-0.05, 0.01], "confidence": 0.95, "rows": 265,
        "overlap": {"test_rows": 265, "champion_trained_on_test": 0},
    },
}  # fmt: skip


@st.composite
def mutated_evaluations(draw: st.DrawFn) -> Any:
    evaluation = copy.deepcopy(EVALUATION)
    for _ in range(draw(st.integers(1, 3))):
        *parent, last = draw(st.sampled_from(paths(evaluation) or [("summary",)]))
        target: Any = evaluation
        for part in parent:
            target = target[part]
        if draw(st.booleans()) and isinstance(target, dict):
            target.pop(last, None)
        else:
            target[last] = draw(json_values)
    return evaluation


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, mutated_evaluations()))
def test_any_evaluation_json_is_an_event_or_one_refusal(raw: Any) -> None:
    """evaluation.json is a job's output: any JSON value. The loader turns it into the
    gate's event or refuses it with a one-line reason; the gate never passes on a NaN."""
    from chalicelib.domain.gate import gate_verdict
    from chalicelib.domain.project import normalise_config
    from chalicelib.sagemaker import evaluation_event

    try:
        event = evaluation_event(raw, "evaluation-x", "aaaaaaaaaaaa")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        assert "\n" not in str(exc)
        return
    config = normalise_config({"base_model": "org/model", "task": "text-classification"})
    passed, reason = gate_verdict(config, event)
    used = list(event.metrics.values())
    c = event.comparison
    if event.champion_metrics and c is not None and c.metric == "macro_f1":
        used += [c.challenger, c.champion, c.low, c.high]  # what the champion comparison decided on
    if passed:
        assert all(math.isfinite(n) for n in used), reason
