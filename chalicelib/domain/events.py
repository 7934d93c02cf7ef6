"""Domain events: what happened, already parsed out of the raw AWS envelope.

Every event carries the id that makes a redelivery recognisable (the EventBridge
``id`` for AWS events, a derived id for events tuneloop raises itself) and the time
it happened. ``kind`` is the key the transition table is written in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, kw_only=True)
class DomainEvent:
    event_id: str
    time: datetime
    # The run this event is about, where the event names it (tag, deterministic name).
    # Events that name only a resource are resolved by the service through the store.
    run_id: str | None = None
    # Who asked, for events a request raised: the caller's IAM principal on AWS, "local"
    # on the local cloud. Recorded in the history entry (the audit trail).
    actor: str | None = None

    @property
    def kind(self) -> str:
        raise NotImplementedError

    @property
    def resource(self) -> str | None:
        """Name of the AWS resource the event reports on, if any."""
        return None

    @property
    def status_key(self) -> str | None:
        """What the event reports, whoever reports it: a resource and the status it reached.
        Applied once per run, so a state change the sweeper read from Describe* makes the
        late real event a duplicate, whatever its id."""
        return None


# --- requests that start or steer a run ---------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunRequested(DomainEvent):
    run_id: str
    project: str
    dataset_uri: str
    parent_run_id: str | None = None
    reason: str = ""

    @property
    def kind(self) -> str:
        return "run.requested"


@dataclass(frozen=True, kw_only=True)
class StopRequested(DomainEvent):
    run_id: str
    reason: str = "stopped by request"
    # A deployed run stops only when the request says to stop serving: that deletes the
    # project's endpoint.
    stop_serving: bool = False

    @property
    def kind(self) -> str:
        return "stop.requested"


@dataclass(frozen=True, kw_only=True)
class ApprovalDecided(DomainEvent):
    run_id: str
    approved: bool
    reason: str = ""

    @property
    def kind(self) -> str:
        return "approval.decided"


@dataclass(frozen=True, kw_only=True)
class RetrainRequested(DomainEvent):
    run_id: str
    reason: str = "retrain requested"
    # Filled in by the service before deciding: the project's retraining run still on its
    # way, and when the project's retraining runs of the last day were created.
    active_retraining_run: str | None = None
    project_retraining_starts: tuple[datetime, ...] = ()
    # Filled in by the service: why the stage's monthly budget lets no run start, or "".
    budget_spent: str = ""

    @property
    def kind(self) -> str:
        return "retrain.requested"


@dataclass(frozen=True, kw_only=True)
class RunSuperseded(DomainEvent):
    run_id: str
    by_run_id: str

    @property
    def kind(self) -> str:
        return "run.superseded"


@dataclass(frozen=True)
class Comparison:
    """The evaluate job's paired comparison of challenger and champion (or, for a first
    model, a trivial baseline: ``against`` says which) on the same rows."""

    metric: str
    challenger: float
    champion: float
    # Percentile interval of (challenger - champion) from a paired bootstrap.
    low: float
    high: float
    confidence: float
    rows: int
    champion_trained_on_test: int | None = None
    # Of ``rows``, how many the two answer differently (None: not recorded).
    differing_rows: int | None = None
    against: str = ""


@dataclass(frozen=True, kw_only=True)
class EvaluationLoaded(DomainEvent):
    """Result of reading a finished evaluation job's metrics and the champion's."""

    run_id: str
    metrics: Mapping[str, float]
    champion_run_id: str | None = None
    champion_metrics: Mapping[str, float] | None = None
    comparison: Comparison | None = None
    # Why there is no comparison although a champion was measured (it trained on every test row).
    comparison_error: str | None = None
    # With no champion: the comparison with a trivial baseline, or why there is none.
    baseline: Comparison | None = None
    baseline_error: str | None = None

    @property
    def kind(self) -> str:
        return "evaluation.loaded"


@dataclass(frozen=True, kw_only=True)
class RunTimedOut(DomainEvent):
    """The reconciler found the run in its state past the state's limit (domain/waits.py)."""

    run_id: str
    state: str
    waited_s: float
    limit_s: int
    awaiting: str | None = None

    @property
    def kind(self) -> str:
        return "run.timed_out"

    @property
    def reason(self) -> str:
        what = f" on {self.awaiting}" if self.awaiting else ""
        return f"waited {_duration(self.waited_s)} {self.state}{what}; the limit is {_duration(self.limit_s)}"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


@dataclass(frozen=True, kw_only=True)
class CommandFailed(DomainEvent):
    """An executor met a permanent error (e.g. a ValidationException) running a command."""

    run_id: str
    command: str
    error: str

    @property
    def kind(self) -> str:
        return "command.failed"


# --- SageMaker jobs -------------------------------------------------------------------

# Outcome names shared by every job type; the SageMaker statuses map onto them.
JOB_OUTCOMES = ("in_progress", "completed", "failed", "stopped")
# Training jobs stopped by SageMaker rather than by a user carry the cause in
# SecondaryStatus; these become outcomes of their own.
TRAINING_OUTCOMES = (*JOB_OUTCOMES, "interrupted", "capacity_timeout", "timed_out")

_STATUS_OUTCOME = {
    "InProgress": "in_progress",
    "Stopping": "in_progress",
    "Completed": "completed",
    "Failed": "failed",
    "Stopped": "stopped",
}


@dataclass(frozen=True, kw_only=True)
class JobChanged(DomainEvent):
    job_name: str
    status: str
    failure_reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    job_type = "job"

    @property
    def outcome(self) -> str:
        return _STATUS_OUTCOME.get(self.status, "in_progress")

    @property
    def kind(self) -> str:
        return f"{self.job_type}_job.{self.outcome}"

    @property
    def resource(self) -> str:
        return self.job_name

    @property
    def status_key(self) -> str | None:
        return None if self.outcome == "in_progress" else f"{self.job_name}:{self.outcome}"


@dataclass(frozen=True, kw_only=True)
class ProcessingJobChanged(JobChanged):
    job_type = "processing"


@dataclass(frozen=True, kw_only=True)
class TrainingJobChanged(JobChanged):
    secondary_status: str = ""
    # Set when the training job is a trial of a tuning job.
    tuning_job_name: str | None = None
    # The last value of each metric its MetricDefinitions scraped (FinalMetricDataList).
    final_metrics: Mapping[str, float] = field(default_factory=dict)

    job_type = "training"

    @property
    def outcome(self) -> str:
        if self.status == "Stopped":
            return {
                "Interrupted": "interrupted",
                "MaxWaitTimeExceeded": "capacity_timeout",
                "MaxRuntimeExceeded": "timed_out",
            }.get(self.secondary_status, "stopped")
        return super().outcome


@dataclass(frozen=True, kw_only=True)
class TuningJobChanged(JobChanged):
    best_training_job: str | None = None
    # The best job's final objective, {metric: value} (FinalHyperParameterTuningJobObjectiveMetric).
    best_objective: Mapping[str, float] = field(default_factory=dict)
    # True when the event comes from DescribeHyperParameterTuningJob rather than EventBridge.
    described: bool = False

    job_type = "tuning"

    @property
    def status_key(self) -> str | None:
        # A completion that names no best job is incomplete news (Describe tells the rest):
        # it must not make the described completion look like a duplicate.
        if self.outcome == "completed" and not self.best_training_job and not self.described:
            return None
        return super().status_key


@dataclass(frozen=True, kw_only=True)
class TransformJobChanged(JobChanged):
    job_type = "transform"


# --- registry, endpoints, alarms -------------------------------------------------------

_APPROVAL_OUTCOME = {
    "PendingManualApproval": "pending",
    "Approved": "approved",
    "Rejected": "rejected",
}


@dataclass(frozen=True, kw_only=True)
class ModelPackageChanged(DomainEvent):
    package_arn: str
    approval_status: str

    @property
    def kind(self) -> str:
        return f"model_package.{_APPROVAL_OUTCOME.get(self.approval_status, 'pending')}"

    @property
    def resource(self) -> str:
        return self.package_arn

    @property
    def status_key(self) -> str | None:
        return f"{self.package_arn}:{self.approval_status}"


_ENDPOINT_OUTCOME = {"IN_SERVICE": "in_service", "FAILED": "failed"}


@dataclass(frozen=True, kw_only=True)
class EndpointChanged(DomainEvent):
    endpoint_name: str
    status: str  # upper case in events: CREATING, UPDATING, IN_SERVICE, FAILED, ...
    endpoint_config_name: str = ""
    failure_reason: str = ""

    @property
    def kind(self) -> str:
        return f"endpoint.{_ENDPOINT_OUTCOME.get(self.status.upper(), 'changing')}"

    @property
    def resource(self) -> str:
        return self.endpoint_name

    @property
    def status_key(self) -> str | None:
        outcome = self.kind.split(".")[1]
        return None if outcome == "changing" else f"{self.endpoint_name}:{self.endpoint_config_name}:{outcome}"


@dataclass(frozen=True, kw_only=True)
class EndpointDeploymentChanged(DomainEvent):
    endpoint_name: str
    state: str
    endpoint_config_name: str = ""
    message: str = ""

    @property
    def kind(self) -> str:
        state = self.state.upper()
        if "ROLL" in state:
            return "endpoint_deployment.rolled_back"
        return "endpoint_deployment.progress"

    @property
    def resource(self) -> str:
        return self.endpoint_name

    @property
    def status_key(self) -> str | None:
        if self.kind != "endpoint_deployment.rolled_back":
            return None
        return f"{self.endpoint_name}:{self.endpoint_config_name}:rolled_back"


@dataclass(frozen=True, kw_only=True)
class AlarmChanged(DomainEvent):
    alarm_name: str
    state: str  # OK | ALARM | INSUFFICIENT_DATA
    previous_state: str
    reason: str = ""
    # Filled in by the service before deciding: the project's retraining run still on its
    # way, and when the project's retraining runs of the last day were created; what the
    # project has that the run did not learn from (None: not counted).
    active_retraining_run: str | None = None
    project_retraining_starts: tuple[datetime, ...] = ()
    # Filled in by the service: why the stage's monthly budget lets no run start, or "".
    budget_spent: str = ""
    new_data: NewData | None = None

    @property
    def kind(self) -> str:
        return f"alarm.{self.state.lower()}"

    @property
    def resource(self) -> str:
        return self.alarm_name


@dataclass(frozen=True)
class NewData:
    """What a project holds that a deployed run did not learn from: labels received for its
    captured requests, and datasets dropped, since the run read its data."""

    labels: int
    datasets: int

    def describe(self) -> str:
        return f"{self.labels} labelled production row(s), {self.datasets} new dataset(s)"


@dataclass(frozen=True, kw_only=True)
class LabelsArrived(DomainEvent):
    """Labels for a project's captured requests were stored (either feedback door), or the
    scheduled check looked again: a retraining run that waits for data may start now."""

    run_id: str
    # The scheduled check looking again (a delivery is not): a wait it does not end is not recorded.
    scheduled: bool = False
    active_retraining_run: str | None = None
    project_retraining_starts: tuple[datetime, ...] = ()
    # Filled in by the service: why the stage's monthly budget lets no run start, or "".
    budget_spent: str = ""
    new_data: NewData | None = None

    @property
    def kind(self) -> str:
        return "labels.arrived"


ALL_EVENT_KINDS: tuple[str, ...] = (
    "run.requested",
    "stop.requested",
    "approval.decided",
    "retrain.requested",
    "run.superseded",
    "evaluation.loaded",
    "run.timed_out",
    "command.failed",
    *(f"processing_job.{o}" for o in JOB_OUTCOMES),
    *(f"training_job.{o}" for o in TRAINING_OUTCOMES),
    *(f"tuning_job.{o}" for o in JOB_OUTCOMES),
    *(f"transform_job.{o}" for o in JOB_OUTCOMES),
    "model_package.pending",
    "model_package.approved",
    "model_package.rejected",
    "endpoint.changing",
    "endpoint.in_service",
    "endpoint.failed",
    "endpoint_deployment.progress",
    "endpoint_deployment.rolled_back",
    "alarm.ok",
    "alarm.alarm",
    "alarm.insufficient_data",
    "labels.arrived",
)
