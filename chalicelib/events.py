"""Raw EventBridge envelopes → typed domain events.

Handlers receive the full envelope (version, id, detail-type, source, account, time,
region, resources, detail). Any JSON value can arrive: every field read is type-checked,
and whatever does not fit raises ``MalformedEventError`` (or ``UnknownEventError`` for a
well-formed event of a type tuneloop does not handle) with a one-line reason naming the
field. Handlers log those with the event id and ignore the event; nothing else is raised.

The same parsers read SageMaker's Describe* answers, whose shape the state-change events
share (the reconciler's sweeper turns a Describe into the event that was lost).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from . import spec
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
# Longer names are no AWS resource's, and could not key a DynamoDB index (2,048 bytes).
MAX_NAME_BYTES = 1024
MAX_ID_LENGTH = 256


class MalformedEventError(spec.TuneloopError, ValueError):
    pass


class UnknownEventError(spec.TuneloopError, ValueError):
    pass


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for reasons: object, array, string, number, …"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MAX_KEY_SHOWN = 64


class Fields:
    """Typed access to one JSON object of an event; ``path`` names it in reasons."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise MalformedEventError(f"{path} must be an object, got {json_type(value)}")
        self.data = value
        self.path = path

    def _at(self, name: str) -> str:
        """The member's path for a one-line reason: a key that is not a plain word
        (an event's own keys can be any string) is quoted with its escapes, and cut."""
        if not _PLAIN_KEY.match(name):
            quoted = json.dumps(name[:MAX_KEY_SHOWN])
            return f"{self.path}[{quoted}]" if self.path else f"[{quoted}]"
        return f"{self.path}.{name}" if self.path else name

    def text(self, name: str, *, required: bool = False, limit: int = MAX_NAME_BYTES) -> str:
        """A string member; "" when absent or null (refused when ``required``)."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise MalformedEventError(f"{self._at(name)} is missing")
            return ""
        if not isinstance(value, str):
            raise MalformedEventError(f"{self._at(name)} must be a string, got {json_type(value)}")
        if required and not value:
            raise MalformedEventError(f"{self._at(name)} is empty")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise MalformedEventError(f"{self._at(name)} is not valid Unicode (a lone surrogate)") from exc
        if size > limit:
            raise MalformedEventError(f"{self._at(name)} is longer than {limit} bytes")
        return value

    def name(self, name: str) -> str:
        """A SageMaker resource name (jobs, endpoints, configs): ``^[a-zA-Z0-9](-*[a-zA-Z0-9])*$``."""
        value = self.text(name, required=True, limit=63)
        if not names.SAGEMAKER_NAME_RE.match(value):
            raise MalformedEventError(f"{self._at(name)} {value!r} is not a SageMaker resource name")
        return value

    def number(self, name: str) -> float | None:
        """A finite number, or None when absent or null."""
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MalformedEventError(f"{self._at(name)} must be a finite number, got {json_type(value)}")
        return float(value)

    def object(self, name: str) -> Fields:
        """A nested object; an empty one when absent or null."""
        value = self.data.get(name)
        return Fields({} if value is None else value, self._at(name))

    def array(self, name: str) -> list[Any]:
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise MalformedEventError(f"{self._at(name)} must be an array, got {json_type(value)}")
        return value


def event_id(raw: Any) -> str | None:
    """The event's id for logs, whatever the event's shape."""
    value = raw.get("id") if isinstance(raw, Mapping) else None
    return value[:MAX_ID_LENGTH] if isinstance(value, str) else None


def parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise MalformedEventError(f"time {value[:64]!r} is not ISO-8601") from exc
    else:
        raise MalformedEventError(f"time must be an ISO-8601 string, got {json_type(value)}")
    if not 1970 <= parsed.year <= 9998:
        raise MalformedEventError(f"time {parsed.isoformat()} is out of range")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_envelope(raw: Any) -> Mapping[str, Any]:
    envelope = Fields(raw, "event")
    missing = [name for name in ENVELOPE_FIELDS if name not in raw]
    if missing:
        raise MalformedEventError(f"event envelope lacks {', '.join(missing)}")
    envelope.text("id", required=True, limit=MAX_ID_LENGTH)
    envelope.text("source", required=True)
    envelope.text("detail-type", required=True)
    Fields(raw["detail"], "detail")
    return raw


def tags_of(detail: Fields) -> dict[str, str]:
    """SageMaker events carry tags as {key: value} or as [{Key, Value}]; Describe answers none."""
    value = detail.data.get("Tags", detail.data.get("tags"))
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for item in value:
            tag = Fields(item, "detail.Tags[]")
            pairs.append((tag.data.get("Key", tag.data.get("key")), tag.data.get("Value", tag.data.get("value"))))
    else:
        raise MalformedEventError(f"detail.Tags must be an object or an array, got {json_type(value)}")
    tags = {}
    for key, tag_value in pairs:
        if not isinstance(key, str) or not isinstance(tag_value, str):
            raise MalformedEventError("detail.Tags must map strings to strings")
        tags[key] = tag_value
    return tags


def _run_id(detail: Fields, *candidate_names: str | None) -> str | None:
    """The run an event is about: its run-id tag or metadata, else the name tuneloop gave."""
    tagged = tags_of(detail).get(RUN_ID_TAG) or detail.object("CustomerMetadataProperties").data.get(RUN_ID_TAG)
    if tagged is not None:
        if not isinstance(tagged, str) or not names.RUN_ID_RE.match(tagged):
            raise MalformedEventError(f"the {RUN_ID_TAG} tag {str(tagged)[:40]!r} is not a tuneloop run id")
        return tagged
    for name in candidate_names:
        found = names.run_id_from_name(name or "")
        if found:
            return found
    return None


def _common(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"event_id": raw["id"], "time": parse_time(raw["time"])}


# As SageMaker's model has it (FinalMetricDataList: at most 40): they are kept in the run's item.
MAX_FINAL_METRICS = 40


def _final_metrics(d: Fields) -> dict[str, float]:
    """The last value of each metric (FinalMetricDataList); non-finite values are left out."""
    metrics = {}
    found = d.array("FinalMetricDataList")
    if len(found) > MAX_FINAL_METRICS:
        raise MalformedEventError(f"detail.FinalMetricDataList has {len(found)} items; SageMaker reports at most 40")
    for n, item in enumerate(found):
        metric = Fields(item, f"detail.FinalMetricDataList[{n}]")
        name, value = metric.text("MetricName", required=True), metric.data.get("Value")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics[name] = float(value)
    return metrics


def _processing(raw: Mapping[str, Any], d: Fields) -> DomainEvent:
    name = d.name("ProcessingJobName")
    return ProcessingJobChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        job_name=name,
        status=d.text("ProcessingJobStatus", required=True),
        failure_reason=d.text("FailureReason", limit=4096),
        details={"exit_message": d.text("ExitMessage", limit=4096)},
    )


def _training(raw: Mapping[str, Any], d: Fields) -> DomainEvent:
    name = d.name("TrainingJobName")
    tuning_arn = d.text("TuningJobArn")
    return TrainingJobChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        job_name=name,
        status=d.text("TrainingJobStatus", required=True),
        secondary_status=d.text("SecondaryStatus"),
        failure_reason=d.text("FailureReason", limit=4096),
        tuning_job_name=tuning_arn.rsplit("/", 1)[-1] or None,
        final_metrics=_final_metrics(d),
        details={
            "billable_seconds": d.number("BillableTimeInSeconds"),
            "training_seconds": d.number("TrainingTimeInSeconds"),
            "model_artifact": d.object("ModelArtifacts").text("S3ModelArtifacts") or None,
        },
    )


def best_objective(best: Fields) -> dict[str, float]:
    """{metric: value} from a BestTrainingJob's FinalHyperParameterTuningJobObjectiveMetric."""
    metric = best.object("FinalHyperParameterTuningJobObjectiveMetric")
    value = metric.number("Value")
    if value is None:
        return {}
    return {metric.text("MetricName") or "objective": value}


def _counters(d: Fields) -> dict[str, int]:
    counters = d.object("TrainingJobStatusCounters")
    out = {}
    for key in counters.data:
        value = counters.number(str(key))
        if value is not None:
            out[str(key)] = int(value)
    return out


def _tuning(raw: Mapping[str, Any], d: Fields) -> DomainEvent:
    name = d.name("HyperParameterTuningJobName")
    best = d.object("BestTrainingJob")
    best_name = best.text("TrainingJobName")
    if best_name and not names.SAGEMAKER_NAME_RE.match(best_name):
        raise MalformedEventError(f"detail.BestTrainingJob.TrainingJobName {best_name!r} is not a job name")
    return TuningJobChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        job_name=name,
        status=d.text("HyperParameterTuningJobStatus", required=True),
        failure_reason=d.text("FailureReason", limit=4096),
        best_training_job=best_name or None,
        best_objective=best_objective(best),
        details={"counters": _counters(d)},
    )


def _transform(raw: Mapping[str, Any], d: Fields) -> DomainEvent:
    name = d.name("TransformJobName")
    return TransformJobChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        job_name=name,
        status=d.text("TransformJobStatus", required=True),
        failure_reason=d.text("FailureReason", limit=4096),
    )


def _model_package(raw: Mapping[str, Any], d: Fields) -> DomainEvent:
    arn = d.text("ModelPackageArn", required=True)
    if not arn.startswith("arn:"):
        raise MalformedEventError(f"detail.ModelPackageArn {arn[:64]!r} is not an ARN")
    return ModelPackageChanged(
        **_common(raw),
        run_id=_run_id(d),
        package_arn=arn,
        approval_status=d.text("ModelApprovalStatus", required=True),
    )


def endpoint_status(status: str) -> str:
    """Describe says ``InService``; EventBridge says ``IN_SERVICE``: one spelling, upper case."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", status).upper()


def _endpoint(raw: Mapping[str, Any], d: Fields) -> DomainEvent:
    name = d.name("EndpointName")
    config = d.text("EndpointConfigName")
    return EndpointChanged(
        **_common(raw),
        run_id=_run_id(d, config),
        endpoint_name=name,
        status=endpoint_status(d.text("EndpointStatus", required=True)),
        endpoint_config_name=config,
        failure_reason=d.text("FailureReason", limit=4096),
    )


def _endpoint_deployment(raw: Mapping[str, Any], d: Fields) -> DomainEvent:
    name = d.name("EndpointName")
    config = d.text("EndpointConfigName") or d.text("TargetEndpointConfigName")
    state: Any = next((d.data[k] for k in ("State", "DeploymentState", "Status") if d.data.get(k)), "")
    if isinstance(state, Mapping):
        nested = Fields(state, "detail.State")
        state = nested.text("Status") or nested.text("Name")
    if not isinstance(state, str):
        raise MalformedEventError(f"detail.State must be a string or an object, got {json_type(state)}")
    return EndpointDeploymentChanged(
        **_common(raw),
        run_id=_run_id(d, config),
        endpoint_name=name,
        state=state,
        endpoint_config_name=config,
        message=d.text("Message", limit=4096) or d.text("StatusMessage", limit=4096),
    )


def _alarm(raw: Mapping[str, Any], d: Fields) -> DomainEvent:
    name = d.text("alarmName", required=True, limit=255)
    state = d.object("state")
    return AlarmChanged(
        **_common(raw),
        run_id=_run_id(d, name),
        alarm_name=name,
        state=state.text("value", required=True),
        previous_state=d.object("previousState").text("value"),
        reason=state.text("reason", limit=4096),
    )


PARSERS: Mapping[tuple[str, str], Callable[[Mapping[str, Any], Fields], DomainEvent]] = {
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
        raise UnknownEventError(f"no parser for {envelope['source'][:64]!r} / {envelope['detail-type'][:64]!r}")
    return parser(envelope, Fields(envelope["detail"], "detail"))


# The detail-type each Describe* answer stands in for.
PROCESSING = "SageMaker Processing Job State Change"
TRAINING = "SageMaker Training Job State Change"
TUNING = "SageMaker HyperParameter Tuning Job State Change"
TRANSFORM = "SageMaker Transform Job State Change"
MODEL_PACKAGE = "SageMaker Model Package State Change"
ENDPOINT = "SageMaker Endpoint State Change"


def parse_described(detail_type: str, described: Any, event_id: str, time: datetime) -> DomainEvent:
    """A SageMaker Describe* answer read as the state-change event it would have sent."""
    return PARSERS[("aws.sagemaker", detail_type)]({"id": event_id, "time": time}, Fields(described, "detail"))
