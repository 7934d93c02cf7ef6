"""The sweeper's probe: where has the resource a run waits on got to?

EventBridge delivers at least once, not exactly once: a state-change event can be lost
(an async Lambda invoke that failed its retries, a handler that threw, rules replaced
mid-deploy, a local host restarted). The reconciler asks SageMaker (Describe*) about the
resource of every run that has waited past its grace period, and this module reads the
answer as the very domain event the lost state change would have carried, through the
same parsers. Its id is derived from what it reports (``sweep-<resource>:<status>``); the
run records that status as applied, so the late real event, whatever its id, is a
duplicate.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from .domain import names
from .domain.commands import LoadEvaluation
from .domain.events import DomainEvent, EndpointDeploymentChanged, TuningJobChanged
from .domain.run import Run
from .domain.states import RunState
from .events import (
    ENDPOINT,
    MODEL_PACKAGE,
    PROCESSING,
    RUN_ID_TAG,
    TRAINING,
    TRANSFORM,
    TUNING,
    MalformedEventError,
    parse_described,
)
from .executors import EvaluationPort, PermanentCommandError
from .observability import logger

S = RunState

# Describe<…> operation, its name parameter, and the event it stands for, per waiting state.
_JOBS = {
    S.PREPARING: ("describe_processing_job", "ProcessingJobName", PROCESSING),
    S.EVALUATING: ("describe_processing_job", "ProcessingJobName", PROCESSING),
    S.TRAINING: ("describe_training_job", "TrainingJobName", TRAINING),
    S.TUNING: ("describe_hyper_parameter_tuning_job", "HyperParameterTuningJobName", TUNING),
    S.TRANSFORMING: ("describe_transform_job", "TransformJobName", TRANSFORM),
}
# Model package versions looked through for a registering run's, newest first.
PACKAGES_SEARCHED = 20


def _missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    message = str(error.get("Message", "")).lower()
    return error.get("Code") in ("ResourceNotFound", "ValidationException") and any(
        text in message for text in ("not found", "does not exist", "could not find", "can't find")
    )


class ResourceProbe:
    """Describe* the resource a run waits on; the event it would have sent, or None."""

    def __init__(self, client: Any, evaluation: EvaluationPort | None = None) -> None:
        self._client = client
        self._evaluation = evaluation

    def observe(self, run: Run, now: datetime) -> DomainEvent | None:
        """What SageMaker says of the run's resource, as a domain event; None while it is
        still in progress, or when SageMaker does not know it (the run's timeout decides)."""
        try:
            event = self._observe(run, now)
        except ClientError as exc:
            if _missing(exc):
                extra = {"run_id": run.run_id, "awaiting": run.awaiting, "reason": str(exc)}
                logger.warning("the awaited resource is unknown to SageMaker", extra=extra)
                return None
            raise
        except MalformedEventError as exc:
            logger.warning("SageMaker's answer is unreadable", extra={"run_id": run.run_id, "reason": str(exc)})
            return None
        return None if event is None else dataclasses.replace(event, run_id=run.run_id)

    def _observe(self, run: Run, now: datetime) -> DomainEvent | None:
        if run.state in _JOBS and run.awaiting:
            operation, key, detail_type = _JOBS[run.state]
            described = getattr(self._client, operation)(**{key: run.awaiting})
            event = parse_described(detail_type, described, "", now)
            if isinstance(event, TuningJobChanged):
                event = dataclasses.replace(event, described=True)  # its BestTrainingJob is all there is
            if event.status_key is None:
                return None  # still in progress: its event will come, or the next sweep asks again
            return dataclasses.replace(event, event_id=f"sweep-{event.status_key}")
        if run.state is S.DEPLOYING and run.awaiting:
            return self._endpoint(run, now)
        if run.state is S.REGISTERING:
            return self._registered_package(run, now)
        if run.state is S.PENDING_APPROVAL and run.package_arn:
            return self._package(run.package_arn, now)
        if run.state is S.GATING and run.model_source and self._evaluation is not None:
            return self._evaluation_of(run)
        return None

    def _endpoint(self, run: Run, now: datetime) -> DomainEvent | None:
        described = self._client.describe_endpoint(EndpointName=run.awaiting)
        event = parse_described(ENDPOINT, described, "", now)
        serving = names.run_id_from_name(described.get("EndpointConfigName") or "")
        if event.kind == "endpoint.in_service" and serving not in (None, run.run_id):
            # In service on another run's model: the update to this run's ended without
            # switching (rolled back, or failed and restored); the rollback event was lost.
            event = EndpointDeploymentChanged(
                event_id="",
                time=now,
                endpoint_name=str(run.awaiting),
                state="ROLLBACK_COMPLETED",
                endpoint_config_name=str(described.get("EndpointConfigName")),
                message=f"DescribeEndpoint: the endpoint serves {described.get('EndpointConfigName')} again, "
                f"not this run's model; {described.get('FailureReason') or 'the update was rolled back'}",
            )
        if event.status_key is None:
            return None
        return dataclasses.replace(event, event_id=f"sweep-{event.status_key}")

    def _package(self, arn: str, now: datetime) -> DomainEvent:
        return self._package_event(self._client.describe_model_package(ModelPackageName=arn), now)

    @staticmethod
    def _package_event(described: Any, now: datetime) -> DomainEvent:
        event = parse_described(MODEL_PACKAGE, described, "", now)
        return dataclasses.replace(event, event_id=f"sweep-{event.status_key}")

    def _registered_package(self, run: Run, now: datetime) -> DomainEvent | None:
        """The run's package: registered with its run id in CustomerMetadataProperties."""
        listed = self._client.list_model_packages(
            ModelPackageGroupName=names.endpoint_name(run.project, stage=run.stage),
            SortBy="CreationTime",
            SortOrder="Descending",
            MaxResults=PACKAGES_SEARCHED,
        )
        for summary in listed.get("ModelPackageSummaryList", []):
            arn = summary.get("ModelPackageArn")
            described = self._client.describe_model_package(ModelPackageName=arn)
            if (described.get("CustomerMetadataProperties") or {}).get(RUN_ID_TAG) == run.run_id:
                return self._package_event(described, now)
        return None

    def _evaluation_of(self, run: Run) -> DomainEvent | None:
        """A gating run whose loaded evaluation never reached it: read it again."""
        assert self._evaluation is not None
        command = LoadEvaluation(run.run_id, run.project, names.job_name(run.run_id, "evaluate", stage=run.stage))
        try:
            outcome = self._evaluation.load(command, run)
        except PermanentCommandError as exc:
            logger.warning("evaluation unreadable", extra={"run_id": run.run_id, "reason": str(exc)})
            return None
        return outcome.events[0] if outcome.events else None
