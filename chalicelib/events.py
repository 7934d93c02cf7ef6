"""Raw EventBridge envelopes → typed domain events.

Handlers receive the full envelope (version, id, detail-type, source, account, time,
region, resources, detail). Anything that is not a complete envelope of a known type
raises ``MalformedEventError`` or ``UnknownEventError``; handlers log and ignore those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .domain import names
from .domain.events import (
    AlarmChanged,
    DomainEvent,
    EndpointChanged,
    EndpointDeploymentChanged,
    ModelPackageChanged,
    ProcessingJobChanged,
    TrainingJobChanged,
    TransformJobChanged,
    TuningJobChanged,
)

RUN_ID_TAG = "tuneloop:run-id"
PROJECT_TAG = "tuneloop:project"
ENVELOPE_FIELDS = ("version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail")


class MalformedEventError(ValueError):
    pass


class UnknownEventError(ValueError):
    pass


def parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise MalformedEventError(f"time must be an ISO-8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MalformedEventError(f"time {value!r} is not ISO-8601") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_envelope(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise MalformedEventError(f"event must be a JSON object, got {type(raw).__name__}")
    missing = [name for name in ENVELOPE_FIELDS if name not in raw]
    if missing:
        raise MalformedEventError(f"event envelope lacks {', '.join(missing)}")
    if not isinstance(raw["detail"], Mapping):
        raise MalformedEventError("event detail must be an object")
    if not isinstance(raw["id"], str) or not raw["id"]:
        raise MalformedEventError("event id must be a non-empty string")
    return raw


def tags_of(detail: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker events carry tags as {key: value} or as [{Key, Value}]."""
    tags = detail.get("Tags") or detail.get("tags") or {}
    if isinstance(tags, Mapping):
        return {str(k): str(v) for k, v in tags.items()}
    if isinstance(tags, list):
        return {
            str(t.get("Key", t.get("key"))): str(t.get("Value", t.get("value"))) for t in tags if isinstance(t, Mapping)
        }
    return {}


def _required(detail: Mapping[str, Any], field: str) -> str:
    value = detail.get(field)
    if not isinstance(value, str) or not value:
        raise MalformedEventError(f"detail.{field} is missing")
    return value


def _run_id(detail: Mapping[str, Any], *candidate_names: str | None) -> str | None:
    tagged = tags_of(detail).get(RUN_ID_TAG)
    if tagged:
        return tagged
    metadata = detail.get("CustomerMetadataProperties")
    if isinstance(metadata, Mapping) and metadata.get(RUN_ID_TAG):
        return str(metadata[RUN_ID_TAG])
    for name in candidate_names:
        found = names.run_id_from_name(name or "")
        if found:
            return found
    return None


def _common(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"event_id": raw["id"], "time": parse_time(raw["time"])}


def _processing(raw: Mapping[str, Any], d: Mapping[str, Any]) -> DomainEvent:
    name = _required(d, "ProcessingJobName")
    return ProcessingJobChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        job_name=name,
        status=_required(d, "ProcessingJobStatus"),
        failure_reason=str(d.get("FailureReason") or ""),
        details={"exit_message": d.get("ExitMessage", "")},
    )


def _training(raw: Mapping[str, Any], d: Mapping[str, Any]) -> DomainEvent:
    name = _required(d, "TrainingJobName")
    tuning_arn = str(d.get("TuningJobArn") or "")
    return TrainingJobChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        job_name=name,
        status=_required(d, "TrainingJobStatus"),
        secondary_status=str(d.get("SecondaryStatus") or ""),
        failure_reason=str(d.get("FailureReason") or ""),
        tuning_job_name=tuning_arn.rsplit("/", 1)[-1] or None,
        final_metrics={
            str(m["MetricName"]): float(m["Value"])
            for m in d.get("FinalMetricDataList") or []
            if isinstance(m, Mapping) and "MetricName" in m and isinstance(m.get("Value"), (int, float))
        },
        details={
            "billable_seconds": d.get("BillableTimeInSeconds"),
            "training_seconds": d.get("TrainingTimeInSeconds"),
            "model_artifact": (d.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
        },
    )


def best_objective(best: Any) -> dict[str, float]:
    """{metric: value} from a BestTrainingJob's FinalHyperParameterTuningJobObjectiveMetric."""
    metric = best.get("FinalHyperParameterTuningJobObjectiveMetric") if isinstance(best, Mapping) else None
    if not isinstance(metric, Mapping) or not isinstance(metric.get("Value"), (int, float)):
        return {}
    return {str(metric.get("MetricName", "objective")): float(metric["Value"])}


def _tuning(raw: Mapping[str, Any], d: Mapping[str, Any]) -> DomainEvent:
    name = _required(d, "HyperParameterTuningJobName")
    best = d.get("BestTrainingJob") or {}
    return TuningJobChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        job_name=name,
        status=_required(d, "HyperParameterTuningJobStatus"),
        failure_reason=str(d.get("FailureReason") or ""),
        best_training_job=(best.get("TrainingJobName") if isinstance(best, Mapping) else None) or None,
        best_objective=best_objective(best),
        details={"counters": d.get("TrainingJobStatusCounters") or {}},
    )


def _transform(raw: Mapping[str, Any], d: Mapping[str, Any]) -> DomainEvent:
    name = _required(d, "TransformJobName")
    return TransformJobChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        job_name=name,
        status=_required(d, "TransformJobStatus"),
        failure_reason=str(d.get("FailureReason") or ""),
    )


def _model_package(raw: Mapping[str, Any], d: Mapping[str, Any]) -> DomainEvent:
    return ModelPackageChanged(
        **_common(raw),
        run_id=_run_id(d),
        package_arn=_required(d, "ModelPackageArn"),
        approval_status=_required(d, "ModelApprovalStatus"),
    )


def _endpoint(raw: Mapping[str, Any], d: Mapping[str, Any]) -> DomainEvent:
    name = _required(d, "EndpointName")
    config = str(d.get("EndpointConfigName") or "")
    return EndpointChanged(
        **_common(raw),
        run_id=_run_id(d, config),
        endpoint_name=name,
        status=_required(d, "EndpointStatus"),
        endpoint_config_name=config,
        failure_reason=str(d.get("FailureReason") or ""),
    )


def _endpoint_deployment(raw: Mapping[str, Any], d: Mapping[str, Any]) -> DomainEvent:
    name = _required(d, "EndpointName")
    config = str(d.get("EndpointConfigName") or d.get("TargetEndpointConfigName") or "")
    state = d.get("State") or d.get("DeploymentState") or d.get("Status")
    if isinstance(state, Mapping):
        state = state.get("Status") or state.get("Name")
    return EndpointDeploymentChanged(
        **_common(raw),
        run_id=_run_id(d, config),
        endpoint_name=name,
        state=str(state or ""),
        endpoint_config_name=config,
        message=str(d.get("Message") or d.get("StatusMessage") or ""),
    )


def _alarm(raw: Mapping[str, Any], d: Mapping[str, Any]) -> DomainEvent:
    name = _required(d, "alarmName")
    state = d.get("state") or {}
    previous = d.get("previousState") or {}
    if not isinstance(state, Mapping) or not state.get("value"):
        raise MalformedEventError("detail.state.value is missing")
    return AlarmChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        alarm_name=name,
        state=str(state["value"]),
        previous_state=str(previous.get("value", "")) if isinstance(previous, Mapping) else "",
        reason=str(state.get("reason") or ""),
    )


PARSERS: Mapping[tuple[str, str], Callable[[Mapping[str, Any], Mapping[str, Any]], DomainEvent]] = {
    ("aws.sagemaker", "SageMaker Processing Job State Change"): _processing,
    ("aws.sagemaker", "SageMaker Training Job State Change"): _training,
    ("aws.sagemaker", "SageMaker HyperParameter Tuning Job State Change"): _tuning,
    ("aws.sagemaker", "SageMaker Transform Job State Change"): _transform,
    ("aws.sagemaker", "SageMaker Model Package State Change"): _model_package,
    ("aws.sagemaker", "SageMaker Endpoint State Change"): _endpoint,
    ("aws.sagemaker", "SageMaker Endpoint Deployment State Change"): _endpoint_deployment,
    ("aws.cloudwatch", "CloudWatch Alarm State Change"): _alarm,
}


def parse_event(raw: Any) -> DomainEvent:
    envelope = check_envelope(raw)
    parser = PARSERS.get((envelope["source"], envelope["detail-type"]))
    if parser is None:
        raise UnknownEventError(f"no parser for {envelope['source']} / {envelope['detail-type']}")
    return parser(envelope, envelope["detail"])
