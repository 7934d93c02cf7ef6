"""Raw EventBridge envelopes (tests/events/) → domain events."""

from __future__ import annotations

import pytest

from chalicelib.domain.events import (
    AlarmChanged,
    EndpointChanged,
    EndpointDeploymentChanged,
    ModelPackageChanged,
    ProcessingJobChanged,
    TrainingJobChanged,
    TransformJobChanged,
    TuningJobChanged,
)
from chalicelib.events import MalformedEventError, UnknownEventError, parse_event
from tests.conftest import load_event

RUN = "aaaaaaaaaaaa"


@pytest.mark.parametrize(
    "fixture,cls,kind",
    [
        ("processing_job_completed", ProcessingJobChanged, "processing_job.completed"),
        ("processing_job_failed", ProcessingJobChanged, "processing_job.failed"),
        ("training_job_completed", TrainingJobChanged, "training_job.completed"),
        ("training_job_interrupted", TrainingJobChanged, "training_job.interrupted"),
        ("training_job_max_runtime", TrainingJobChanged, "training_job.timed_out"),
        ("training_job_in_progress", TrainingJobChanged, "training_job.in_progress"),
        ("tuning_job_completed", TuningJobChanged, "tuning_job.completed"),
        ("transform_job_completed", TransformJobChanged, "transform_job.completed"),
        ("model_package_approved", ModelPackageChanged, "model_package.approved"),
        ("endpoint_in_service", EndpointChanged, "endpoint.in_service"),
        ("endpoint_failed", EndpointChanged, "endpoint.failed"),
        ("endpoint_deployment_rolled_back", EndpointDeploymentChanged, "endpoint_deployment.rolled_back"),
        ("alarm_drift", AlarmChanged, "alarm.alarm"),
    ],
)
def test_fixtures_parse(fixture: str, cls: type, kind: str) -> None:
    raw = load_event(fixture)
    event = parse_event(raw)
    assert isinstance(event, cls)
    assert event.kind == kind
    assert event.event_id == raw["id"]
    assert event.run_id == RUN  # from a tag, metadata, or the deterministic name
    assert event.time.tzinfo is not None


def test_failure_reason_kept_verbatim() -> None:
    raw = load_event("processing_job_failed")
    assert parse_event(raw).failure_reason == raw["detail"]["FailureReason"]  # type: ignore[attr-defined]


def test_tuning_event_names_best_job() -> None:
    event = parse_event(load_event("tuning_job_completed"))
    assert isinstance(event, TuningJobChanged)
    assert event.best_training_job == f"tl-{RUN}-tune-1-003-1a2b3c4d"


def test_alarm_states() -> None:
    event = parse_event(load_event("alarm_drift"))
    assert isinstance(event, AlarmChanged)
    assert (event.previous_state, event.state) == ("OK", "ALARM")


@pytest.mark.parametrize("missing", ["id", "detail", "time", "source", "account"])
def test_incomplete_envelope_is_malformed(missing: str) -> None:
    raw = load_event("training_job_completed")
    del raw[missing]
    with pytest.raises(MalformedEventError, match=missing if missing != "id" else "id"):
        parse_event(raw)


def test_missing_detail_field_is_malformed() -> None:
    raw = load_event("training_job_completed")
    del raw["detail"]["TrainingJobStatus"]
    with pytest.raises(MalformedEventError, match="TrainingJobStatus"):
        parse_event(raw)


def test_unknown_detail_type() -> None:
    raw = load_event("training_job_completed", **{"detail-type": "SageMaker Image State Change"})
    with pytest.raises(UnknownEventError):
        parse_event(raw)


@pytest.mark.parametrize("bad", [None, [], "text", 3])
def test_non_object_event(bad: object) -> None:
    with pytest.raises(MalformedEventError):
        parse_event(bad)


def test_training_metrics_come_with_the_completion() -> None:
    event = parse_event(load_event("training_job_completed"))
    assert isinstance(event, TrainingJobChanged)
    assert event.final_metrics == {"validation_macro_f1": 0.91, "train_loss": 0.21}
    assert event.details["model_artifact"].endswith("/output/model.tar.gz")
