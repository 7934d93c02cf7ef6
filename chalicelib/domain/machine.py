"""The run lifecycle as one table, and ``decide``.

Read ``ROWS`` top to bottom: (state, event kind) → guard → next state + commands.
``decide`` is pure and total: it either applies the first row whose guard holds or
returns an explicit no-op with a category and a reason. It has no clock; time comes in
with the event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import names
from .commands import (
    Command,
    ConfigureAutoscaling,
    CreateDriftAlarms,
    DeleteEndpoint,
    DeployEndpoint,
    DescribeTuningJob,
    LoadEvaluation,
    RegisterModelPackage,
    RetireDeployment,
    StartChildRun,
    StartProcessingJob,
    StartTrainingJob,
    StartTransformJob,
    StartTuningJob,
    StopJob,
    SupersedePrevious,
    UpdateModelPackageApproval,
)
from .events import (
    AlarmChanged,
    ApprovalDecided,
    CommandFailed,
    DomainEvent,
    EndpointChanged,
    EndpointDeploymentChanged,
    EvaluationLoaded,
    JobChanged,
    LabelsArrived,
    ModelPackageChanged,
    ProcessingJobChanged,
    RetrainRequested,
    StopRequested,
    TrainingJobChanged,
    TuningJobChanged,
)
from .gate import gate_verdict
from .run import HistoryEntry, Run
from .states import RunState

S = RunState
Effect = Callable[[Run, Any], Sequence[Command]]
Predicate = Callable[[Run, Any], bool]


@dataclass(frozen=True)
class Guard:
    description: str
    holds: Predicate


@dataclass(frozen=True)
class Row:
    state: RunState
    kind: str
    target: RunState
    note: str
    guard: Guard | None = None
    effect: Effect | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of one event. ``noop`` names why nothing changed, if nothing did."""

    run: Run
    commands: tuple[Command, ...]
    note: str
    noop: str | None = None
    from_state: RunState | None = None

    @property
    def changed(self) -> bool:
        return self.noop is None


# No-op categories.
DUPLICATE = "duplicate"
STALE = "stale"
OUT_OF_ORDER = "out_of_order"
TERMINAL = "terminal"
PROGRESS = "progress"
IGNORED = "ignored"
GUARDED = "guarded"

# Kinds that report on a resource the run must be waiting on to be moved by them.
_AWAITED_PREFIXES = (
    "processing_job.",
    "training_job.",
    "tuning_job.",
    "transform_job.",
    "endpoint.",
    "endpoint_deployment.",
)


# --- guards ----------------------------------------------------------------------------


def _tuning_on(run: Run, _: Any) -> bool:
    return bool(run.config.get("tuning"))


def _mode(mode: str) -> Guard:
    return Guard(f"deployment mode is {mode}", lambda run, _: run.config["deployment"]["mode"] == mode)


def _retries_left(run: Run, _: Any) -> bool:
    parsed = names.parse_job_name(run.awaiting or "")
    attempt = parsed[2] if parsed else 1
    return attempt <= int(run.config["training"]["max_spot_retries"])


def _has_best_job(_: Run, event: TuningJobChanged) -> bool:
    return bool(event.best_training_job)


def _described(_: Run, event: TuningJobChanged) -> bool:
    return event.described


def tuning_counts(event: TuningJobChanged) -> str:
    """``Completed 0, Failed 3, Stopped 1`` from the job's TrainingJobStatusCounters."""
    counters = event.details.get("counters") or {}
    failed = int(counters.get("NonRetryableError", 0)) + int(counters.get("RetryableError", 0))
    return f"Completed {int(counters.get('Completed', 0))}, Failed {failed}, Stopped {int(counters.get('Stopped', 0))}"


def _gate_passes(run: Run, event: EvaluationLoaded) -> bool:
    return gate_verdict(run.config, event)[0]


Trigger = AlarmChanged | RetrainRequested | LabelsArrived


def _may_retrain(run: Run, event: Trigger) -> bool:
    return _retrain_block(run, event) is None


def _waits_for_data(run: Run, event: Trigger) -> bool:
    """The retraining run would start but for data (it waits for labels or a dataset), or
    but for the month's budget (it waits for the next month, or a higher budget): the
    scheduled check looks again."""
    block = _retrain_block(run, event, evidence=False)
    if event.budget_spent and block == event.budget_spent:
        return True
    return block is None and _nothing_new(run, event) is not None


def _nothing_new(run: Run, event: Trigger) -> str | None:
    """Why there is nothing to learn from yet (None: there is, or it was not counted). A
    request by hand is the operator's call and is not asked."""
    data = event.new_data if isinstance(event, (AlarmChanged, LabelsArrived)) else None
    if data is None and isinstance(event, LabelsArrived):
        return "what is new could not be counted; the next check looks again"  # labels are only evidence
    if data is None:
        return None
    needed = int(run.config["retrain"].get("min_new_labels", 30))
    if data.datasets > 0 or data.labels >= needed:
        return None
    alarms = [event.alarm_name] if isinstance(event, AlarmChanged) else list(run.waiting_for_data)
    return (
        f"{', '.join(names.monitored(a) for a in alarms)}; nothing new to learn from yet: {data.describe()}; "
        f"a retraining run starts when {needed} labels (or a new dataset) have arrived"
    )


def _retrain_block(run: Run, event: Trigger, evidence: bool = True) -> str | None:
    """Why this event may not start a retraining run, or None. A request by hand skips the
    alarm's own checks, the drift switch and the new-data rule, never the one-at-a-time
    rule, cooldown or cap. Labels that arrive start one only for an alarm that waits."""
    policy = run.config["retrain"]
    if isinstance(event, LabelsArrived) and not run.waiting_for_data:
        return "no retraining run waits for data"
    if isinstance(event, AlarmChanged):
        if not names.is_monitoring_alarm_of(event.alarm_name, run.run_id):
            return f"alarm {event.alarm_name} is neither a drift nor a quality alarm of this run"
        if event.previous_state == "ALARM":
            return "alarm was already in ALARM"
        if not policy["on_drift"]:
            return "retraining on drift is off for this project"
    if event.active_retraining_run:
        return f"run {event.active_retraining_run} of this project is still active"
    if event.budget_spent:
        return event.budget_spent
    # The project's retraining runs when the service supplied them (they include this run's
    # children); else what this run's own history knows.
    earlier = list(event.project_retraining_starts) or run.times_of("StartChildRun")
    # (AWS stamps events in whole seconds: with no cooldown, one a moment "before" the last
    # start is not inside it.)
    if policy["cooldown_s"] and earlier and event.time - max(earlier) < timedelta(seconds=policy["cooldown_s"]):
        return f"within the retrain cooldown of {policy['cooldown_s']}s"
    if len([t for t in earlier if event.time - t < timedelta(days=1)]) >= policy["max_per_day"]:
        return f"daily cap of {policy['max_per_day']} retraining runs reached"
    return _nothing_new(run, event) if evidence else None


# --- effects ---------------------------------------------------------------------------


def _prepare(run: Run, _: Any) -> list[Command]:
    return [
        StartProcessingJob(
            run.run_id,
            run.project,
            names.job_name(run.run_id, "prepare", stage=run.stage),
            step="prepare",
            input_uri=run.dataset_uri,
        )
    ]


def _train(run: Run, _: Any) -> list[Command]:
    return [
        StartTrainingJob(run.run_id, run.project, names.job_name(run.run_id, "train", 1, stage=run.stage), attempt=1)
    ]


def _retrain_attempt(run: Run, _: Any) -> list[Command]:
    parsed = names.parse_job_name(run.awaiting or "")
    attempt = (parsed[2] if parsed else 1) + 1
    return [
        StartTrainingJob(
            run.run_id,
            run.project,
            names.job_name(run.run_id, "train", attempt, stage=run.stage),
            attempt=attempt,
            resume_from=run.awaiting,
        )
    ]


def _tune(run: Run, _: Any) -> list[Command]:
    return [
        StartTuningJob(
            run.run_id,
            run.project,
            names.job_name(run.run_id, "tune", stage=run.stage),
            warm_start_from_run=run.parent_run_id,
        )
    ]


def _describe_tuning(run: Run, event: TuningJobChanged) -> list[Command]:
    return [DescribeTuningJob(run.run_id, event.job_name)]


def _evaluate(source: Callable[[Run, Any], str]) -> Effect:
    def effect(run: Run, event: Any) -> list[Command]:
        return [
            StartProcessingJob(
                run.run_id,
                run.project,
                names.job_name(run.run_id, "evaluate", stage=run.stage),
                step="evaluate",
                input_uri=source(run, event),
            )
        ]

    return effect


def _load_evaluation(run: Run, event: JobChanged) -> list[Command]:
    return [LoadEvaluation(run.run_id, run.project, event.job_name)]


def _register(run: Run, _: Any) -> list[Command]:
    status = "Approved" if run.config["approval"] == "auto" else "PendingManualApproval"
    return [RegisterModelPackage(run.run_id, run.project, run.model_source or "", approval_status=status)]


def _update_approval(run: Run, event: ApprovalDecided) -> list[Command]:
    return [UpdateModelPackageApproval(run.run_id, run.package_arn or "", approved=event.approved, reason=event.reason,
                                       approver=event.actor)]  # fmt: skip


def _deploy(run: Run, _: Any) -> list[Command]:
    return [
        DeployEndpoint(
            run.run_id, run.project, names.endpoint_name(run.project, stage=run.stage), run.model_source or ""
        )
    ]


def _transform(run: Run, _: Any) -> list[Command]:
    return [StartTransformJob(run.run_id, run.project, names.job_name(run.run_id, "transform", stage=run.stage))]


def _deployed(run: Run, _: Any) -> list[Command]:
    endpoint = names.endpoint_name(run.project, stage=run.stage)
    return [
        SupersedePrevious(run.run_id, run.project),
        ConfigureAutoscaling(run.run_id, run.project, endpoint),
        CreateDriftAlarms(run.run_id, run.project, endpoint),
    ]


def _retire(run: Run, _: Any) -> list[Command]:
    """Once another model serves (superseded) or the update was undone (rolled back)."""
    return [RetireDeployment(run.run_id, run.project)] if run.config["deployment"]["delete_superseded"] else []


def _child_run(run: Run, event: DomainEvent) -> list[Command]:
    if isinstance(event, LabelsArrived):
        data = event.new_data.describe() if event.new_data else "new data"
        waited = ", ".join(f"{names.monitored(a)} ({a})" for a in run.waiting_for_data)
        reason = f"{waited} waited for data: {data}"
    elif isinstance(event, AlarmChanged):
        kind = "quality" if "-quality-" in event.alarm_name else "drift"
        reason = f"{kind} alarm {event.alarm_name} went {event.previous_state or '?'}→{event.state}"
        if event.reason:
            reason += f": {event.reason}"
    else:
        reason = getattr(event, "reason", "") or event.kind
    return [StartChildRun(run.run_id, run.project, names.derive_id("child", run.run_id, event.event_id), reason)]


_JOB_TYPE_OF_STATE = {
    S.PREPARING: "processing",
    S.EVALUATING: "processing",
    S.TRAINING: "training",
    S.TUNING: "tuning",
    S.TRANSFORMING: "transform",
}


def _stop(run: Run, _: Any) -> list[Command]:
    job_type = _JOB_TYPE_OF_STATE.get(run.state)
    if job_type and run.awaiting:
        return [StopJob(run.run_id, job_type=job_type, job_name=run.awaiting)]
    if run.state is S.DEPLOYED:
        return [DeleteEndpoint(run.run_id, names.endpoint_name(run.project, stage=run.stage))]
    return []


# --- the table ---------------------------------------------------------------------------

_STOP_SERVING = Guard(
    "the request asks to stop serving (stop_serving), which deletes the endpoint",
    lambda run, e: isinstance(e, StopRequested) and e.stop_serving,
)
_TUNING = Guard("tuning ranges configured", _tuning_on)
_NO_TUNING = Guard("no tuning ranges", lambda run, e: not _tuning_on(run, e))
_RETRIES_LEFT = Guard("spot retries left", _retries_left)
_NO_RETRIES_LEFT = Guard("spot retries used up", lambda run, e: not _retries_left(run, e))
_BEST_JOB = Guard("a best training job exists", _has_best_job)
_NO_BEST_IN_EVENT = Guard(
    "the event names no best job", lambda run, e: not _has_best_job(run, e) and not _described(run, e)
)
_NO_BEST_JOB = Guard("no successful training job", lambda run, e: not _has_best_job(run, e) and _described(run, e))
_GATE_PASSES = Guard("quality gate passes", _gate_passes)
_GATE_FAILS = Guard("quality gate fails", lambda run, e: not _gate_passes(run, e))
_SERVES_THIS_RUN = Guard(
    "the endpoint serves this run's model",
    lambda run, e: names.run_id_from_name(e.endpoint_config_name) in (None, run.run_id),
)
_RETRAIN_ALLOWED = Guard(
    "drift or quality alarm of this run (or a request), OK→ALARM, none active, cooldown and cap allow", _may_retrain
)
_RETRAIN_BLOCKED = Guard("retraining not allowed", lambda run, e: not _may_retrain(run, e))
_DATA_CAME = Guard(
    "a retraining run waits for data, and now has it (none active, cooldown and cap allow)", _may_retrain
)
_STILL_WAITING = Guard(
    "a retraining run waits for data",
    # A delivery that does not end the wait is recorded; the scheduled look again is not.
    lambda run, e: bool(run.waiting_for_data) and not e.scheduled and not _may_retrain(run, e),
)

_ACTIVE = [s for s in RunState if not s.terminal]
# States with a time limit (domain/waits.py): past it, the reconciler times the run out.
_TIMED = [S.PREPARING, S.TRAINING, S.TUNING, S.EVALUATING, S.GATING, S.REGISTERING, S.DEPLOYING, S.TRANSFORMING]

ROWS: tuple[Row, ...] = (
    Row(S.RECEIVED, "run.requested", S.PREPARING, "prepare the dataset", effect=_prepare),
    Row(S.PREPARING, "processing_job.completed", S.TUNING, "data prepared; tune", _TUNING, _tune),
    Row(S.PREPARING, "processing_job.completed", S.TRAINING, "data prepared; train", _NO_TUNING, _train),
    Row(S.PREPARING, "processing_job.failed", S.FAILED, "prepare job failed"),
    Row(S.PREPARING, "processing_job.stopped", S.STOPPED, "prepare job stopped outside tuneloop"),
    Row(
        S.TRAINING,
        "training_job.completed",
        S.EVALUATING,
        "trained; evaluate",
        effect=_evaluate(lambda r, e: e.job_name),
    ),
    Row(
        S.TRAINING, "training_job.interrupted", S.TRAINING, "spot interruption; resume", _RETRIES_LEFT, _retrain_attempt
    ),
    Row(S.TRAINING, "training_job.interrupted", S.FAILED, "spot interruptions exhausted the retries", _NO_RETRIES_LEFT),
    Row(
        S.TRAINING,
        "training_job.capacity_timeout",
        S.TRAINING,
        "no spot capacity in time; retry",
        _RETRIES_LEFT,
        _retrain_attempt,
    ),
    Row(S.TRAINING, "training_job.capacity_timeout", S.FAILED, "no spot capacity; retries used up", _NO_RETRIES_LEFT),
    Row(S.TRAINING, "training_job.timed_out", S.FAILED, "training exceeded MaxRuntimeInSeconds"),
    Row(S.TRAINING, "training_job.failed", S.FAILED, "training job failed"),
    Row(S.TRAINING, "training_job.stopped", S.STOPPED, "training job stopped outside tuneloop"),
    Row(
        S.TUNING,
        "tuning_job.completed",
        S.EVALUATING,
        "tuned; evaluate the best model",
        _BEST_JOB,
        _evaluate(lambda r, e: e.best_training_job),
    ),
    Row(
        S.TUNING,
        "tuning_job.completed",
        S.TUNING,
        "tuned; read the best job from DescribeHyperParameterTuningJob",
        _NO_BEST_IN_EVENT,
        _describe_tuning,
    ),
    Row(S.TUNING, "tuning_job.completed", S.FAILED, "tuning finished with no successful training job", _NO_BEST_JOB),
    Row(S.TUNING, "tuning_job.failed", S.FAILED, "tuning job failed"),
    Row(S.TUNING, "tuning_job.stopped", S.STOPPED, "tuning job stopped outside tuneloop"),
    Row(
        S.EVALUATING,
        "processing_job.completed",
        S.GATING,
        "evaluated; load metrics for the gate",
        effect=_load_evaluation,
    ),
    Row(S.EVALUATING, "processing_job.failed", S.FAILED, "evaluation job failed"),
    Row(S.EVALUATING, "processing_job.stopped", S.STOPPED, "evaluation job stopped outside tuneloop"),
    Row(S.GATING, "evaluation.loaded", S.REGISTERING, "gate passed; register", _GATE_PASSES, _register),
    Row(S.GATING, "evaluation.loaded", S.REJECTED, "gate failed", _GATE_FAILS),
    Row(S.REGISTERING, "model_package.pending", S.PENDING_APPROVAL, "registered; waiting for approval"),
    *(
        row
        for state in (S.REGISTERING, S.PENDING_APPROVAL)
        for row in (
            Row(
                state,
                "model_package.approved",
                S.DEPLOYING,
                "approved; deploy to the endpoint",
                _mode("realtime"),
                _deploy,
            ),
            Row(
                state,
                "model_package.approved",
                S.TRANSFORMING,
                "approved; run the batch transform",
                _mode("batch"),
                _transform,
            ),
            Row(state, "model_package.approved", S.REGISTERED, "approved; no deployment configured", _mode("none")),
            Row(state, "model_package.rejected", S.REJECTED, "model package rejected"),
        )
    ),
    Row(
        S.PENDING_APPROVAL,
        "approval.decided",
        S.PENDING_APPROVAL,
        "record the approval decision on the package",
        effect=_update_approval,
    ),
    Row(
        S.DEPLOYING,
        "endpoint.in_service",
        S.DEPLOYED,
        "endpoint in service; monitor for drift",
        _SERVES_THIS_RUN,
        _deployed,
    ),
    Row(S.DEPLOYING, "endpoint.failed", S.FAILED, "endpoint deployment failed"),
    Row(
        S.DEPLOYING,
        "endpoint_deployment.rolled_back",
        S.ROLLED_BACK,
        "deployment rolled back; the previous model serves",
        effect=_retire,
    ),
    Row(S.TRANSFORMING, "transform_job.completed", S.COMPLETED, "batch transform done"),
    Row(S.TRANSFORMING, "transform_job.failed", S.FAILED, "batch transform failed"),
    Row(S.TRANSFORMING, "transform_job.stopped", S.STOPPED, "batch transform stopped outside tuneloop"),
    Row(
        S.DEPLOYED,
        "alarm.alarm",
        S.DEPLOYED,
        "drift or quality alarm; start a retraining run",
        _RETRAIN_ALLOWED,
        _child_run,
    ),
    # Alarms that start nothing are still recorded: the history says why no run started.
    Row(S.DEPLOYED, "alarm.alarm", S.DEPLOYED, "alarm in ALARM; no retraining", _RETRAIN_BLOCKED),
    Row(S.DEPLOYED, "alarm.ok", S.DEPLOYED, "alarm back to OK; nothing to do"),
    Row(
        S.DEPLOYED,
        "labels.arrived",
        S.DEPLOYED,
        "new data arrived; start the retraining run that waited for it",
        _DATA_CAME,
        _child_run,
    ),
    Row(S.DEPLOYED, "labels.arrived", S.DEPLOYED, "labels arrived; the retraining run still waits", _STILL_WAITING),
    Row(S.DEPLOYED, "alarm.insufficient_data", S.DEPLOYED, "alarm has insufficient data; nothing to do"),
    Row(
        S.DEPLOYED,
        "retrain.requested",
        S.DEPLOYED,
        "retraining requested; start a child run",
        _RETRAIN_ALLOWED,
        _child_run,
    ),
    Row(S.DEPLOYED, "run.superseded", S.SUPERSEDED, "a newer run is deployed", effect=_retire),
    *(
        Row(state, "stop.requested", S.STOPPED, "stopped by request", effect=_stop)
        for state in _ACTIVE
        if state is not S.DEPLOYED
    ),
    Row(
        S.DEPLOYED, "stop.requested", S.STOPPED, "stopped serving by request; delete the endpoint", _STOP_SERVING, _stop
    ),
    *(
        Row(state, "run.timed_out", S.FAILED, "timed out", effect=_stop if state in _JOB_TYPE_OF_STATE else None)
        for state in _TIMED
    ),
    *(Row(state, "command.failed", S.FAILED, "a command failed permanently") for state in _ACTIVE),
)

# Explicit no-ops: (state, kind) pairs that are expected and change nothing.
NO_OPS: Mapping[tuple[RunState, str], tuple[str, str]] = {
    **{
        (state, f"{job}_job.in_progress"): (PROGRESS, "job still running")
        for state in _ACTIVE
        for job in ("processing", "training", "tuning", "transform")
    },
    **{(state, "endpoint.changing"): (PROGRESS, "endpoint still changing") for state in _ACTIVE},
    **{(state, "endpoint_deployment.progress"): (PROGRESS, "deployment in progress") for state in _ACTIVE},
    (S.PENDING_APPROVAL, "model_package.pending"): (DUPLICATE, "package already pending approval"),
    **{
        (S.DEPLOYING, f"alarm.{state}"): (IGNORED, "a rollback alarm during the deployment is SageMaker's to act on")
        for state in ("ok", "alarm", "insufficient_data")
    },
}


def rows_for(state: RunState, kind: str) -> list[Row]:
    return [row for row in ROWS if row.state is state and row.kind == kind]


def decide(run: Run, event: DomainEvent) -> Decision:
    kind = event.kind
    if run.has_seen(event.event_id):
        return _noop(run, DUPLICATE, f"event {event.event_id} was already applied")
    seen = run.applied(event.status_key)
    if seen is not None:
        return _noop(run, DUPLICATE, f"{event.status_key} was already applied (event {seen.event_id})")
    if run.state.terminal:
        return _noop(run, TERMINAL, f"run is {run.state.value}; {kind} changes nothing")
    if kind.startswith(_AWAITED_PREFIXES):
        mismatch = _resource_mismatch(run, event)
        if mismatch:
            return _noop(run, *mismatch)
    if (run.state, kind) in NO_OPS:
        category, reason = NO_OPS[(run.state, kind)]
        return _noop(run, category, reason)
    rows = rows_for(run.state, kind)
    if not rows:
        return _noop(run, OUT_OF_ORDER, f"{kind} is not expected while {run.state.value}")
    for row in rows:
        if row.guard is None or row.guard.holds(run, event):
            return _apply(run, event, row)
    reason = "; ".join(f"not {row.guard.description}" for row in rows if row.guard)
    if isinstance(event, (AlarmChanged, RetrainRequested, LabelsArrived)):
        reason = _retrain_block(run, event) or reason
    return _noop(run, GUARDED, reason)


def _resource_mismatch(run: Run, event: DomainEvent) -> tuple[str, str] | None:
    resource = event.resource
    if resource == run.awaiting:
        return None
    if (
        isinstance(event, TrainingJobChanged)
        and run.awaiting
        and (event.tuning_job_name == run.awaiting or (resource or "").startswith(f"{run.awaiting}-"))
    ):
        return PROGRESS, f"{resource} is a trial of tuning job {run.awaiting}"
    parsed = names.parse_job_name(resource or "")
    if parsed and parsed[0] == run.run_id and parsed[1] == "drift":
        return IGNORED, f"{resource} is a drift check; its metrics reach the run through its drift alarms"
    if resource in run.past_resources:
        return STALE, f"{resource} is no longer what the run waits on ({run.awaiting or 'nothing'})"
    return (
        OUT_OF_ORDER,
        f"{resource} was not started by this run at this point (waiting on {run.awaiting or 'nothing'})",
    )


def _noop(run: Run, category: str, reason: str) -> Decision:
    return Decision(run=run, commands=(), note=reason, noop=category, from_state=run.state)


def _apply(run: Run, event: DomainEvent, row: Row) -> Decision:
    commands = tuple(row.effect(run, event)) if row.effect else ()
    note = _note(run, event, row)
    awaits = next((c.awaits for c in reversed(commands) if c.awaits), None)
    awaiting = None if awaits is None and row.target is not run.state else awaits or run.awaiting
    entry = HistoryEntry(
        event_id=event.event_id,
        event_kind=event.kind,
        from_state=run.state,
        to_state=row.target,
        reason=_clip(note, MAX_REASON_CHARS),
        # AWS stamps events in whole seconds: never before the entry it follows, or a
        # stage's duration would come out negative.
        time=max(event.time, run.history[-1].time) if run.history else event.time,
        commands=tuple(type(c).__name__ for c in commands),
        awaits=awaits,
        key=event.status_key,
        actor=_clip(event.actor, MAX_ACTOR_CHARS) if event.actor is not None else None,
    )
    new_run = dataclasses.replace(
        run,
        state=row.target,
        awaiting=awaiting,
        model_source=_trained_model(event) or run.model_source,
        metrics=_with_metrics(run, event),
        package_arn=event.package_arn if isinstance(event, ModelPackageChanged) else run.package_arn,
        history=_bounded((*run.history, entry)),
        waiting_for_data=_waiting_for_data(run, event, row, commands),
    )
    return Decision(run=new_run, commands=commands, note=note, from_state=run.state)


def _waiting_for_data(run: Run, event: DomainEvent, row: Row, commands: Sequence[Command]) -> tuple[str, ...]:
    """The alarms whose retraining run waits for data after this row: one is added when it
    is held for nothing new to learn from, and leaves when it returns to OK; all go when a
    retraining run starts or the run moves on."""
    if row.target is not run.state or any(isinstance(c, StartChildRun) for c in commands):
        return ()
    waiting = run.waiting_for_data
    if isinstance(event, AlarmChanged) and event.kind == "alarm.alarm" and _waits_for_data(run, event):
        return waiting if event.alarm_name in waiting else (*waiting, event.alarm_name)
    if isinstance(event, AlarmChanged) and event.kind == "alarm.ok":
        return tuple(a for a in waiting if a != event.alarm_name)
    return waiting


# A run's item must stay under DynamoDB's 400 KB whatever its history: a commit it refused
# would stop every later transition of the run. A deployed run can live for months, its
# alarms' flips and retraining requests recorded; each entry's text is bounded, and so is
# the history: past MAX_RECORDED_NOOPS records that changed nothing, or past
# HISTORY_BUDGET_BYTES in all, the oldest entries go, those that changed no state first.
MAX_RECORDED_NOOPS = 100
MAX_REASON_CHARS = 2000
MAX_ACTOR_CHARS = 512
HISTORY_BUDGET_BYTES = 150_000


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def entry_bytes(entry: HistoryEntry) -> int:
    """About what an entry takes in the run's item: its attributes' names and values."""
    texts = (entry.event_id, entry.event_kind, entry.from_state.value, entry.to_state.value, entry.reason,
             entry.awaits or "", entry.key or "", entry.actor or "", *entry.commands)  # fmt: skip
    return 120 + sum(len(text.encode("utf-8")) for text in texts)


def _bounded(history: tuple[HistoryEntry, ...]) -> tuple[HistoryEntry, ...]:
    """The history within its caps: the oldest records that changed nothing (same state,
    no commands) past MAX_RECORDED_NOOPS go; then, while it is over HISTORY_BUDGET_BYTES,
    the oldest records that changed nothing, then the oldest self-loops that issued
    commands, then the oldest transitions (the run's creation and the newest entry stay)."""
    quiet = [n for n, e in enumerate(history) if e.from_state is e.to_state and not e.commands]
    drop = set(quiet[: max(0, len(quiet) - MAX_RECORDED_NOOPS)])
    size = sum(entry_bytes(e) for n, e in enumerate(history) if n not in drop)
    if size > HISTORY_BUDGET_BYTES:
        loops = [n for n, e in enumerate(history) if e.from_state is e.to_state and e.commands]
        moves = [n for n, e in enumerate(history) if e.from_state is not e.to_state]
        for n in [*quiet, *loops, *moves]:
            if size <= HISTORY_BUDGET_BYTES:
                break
            if n not in drop and 0 < n < len(history) - 1:  # the run's creation, and what just happened, stay
                drop.add(n)
                size -= entry_bytes(history[n])
    return history if not drop else tuple(e for n, e in enumerate(history) if n not in drop)


def _with_metrics(run: Run, event: DomainEvent) -> Mapping[str, Any]:
    """The run's metrics, with what a finished training job reported added."""
    if isinstance(event, TrainingJobChanged) and event.final_metrics:
        return {**run.metrics, "training": dict(event.final_metrics)}
    if isinstance(event, TuningJobChanged) and event.best_training_job and event.best_objective:
        return {**run.metrics, "training": dict(event.best_objective)}
    if isinstance(event, EvaluationLoaded):
        out = {**run.metrics, "evaluation": dict(event.metrics)}
        if event.comparison is not None:
            out["comparison"] = {**dataclasses.asdict(event.comparison), "champion_run_id": event.champion_run_id}
        if event.baseline is not None:  # the baseline's score under its own name
            compared = dataclasses.asdict(event.baseline)
            out["baseline"] = {k: v for k, v in compared.items() if not k.startswith("champion")}
            out["baseline"]["baseline"] = event.baseline.champion
        return out
    return run.metrics


def _trained_model(event: DomainEvent) -> str | None:
    """The training job whose model the run carries forward, when the event names one."""
    if isinstance(event, TrainingJobChanged) and event.outcome == "completed":
        return event.job_name
    if isinstance(event, TuningJobChanged) and event.outcome == "completed":
        return event.best_training_job
    return None


def _note(run: Run, event: DomainEvent, row: Row) -> str:
    """The history reason: the row's note plus what the event said that matters later."""
    if isinstance(event, EvaluationLoaded):
        return f"{row.note}: {gate_verdict(run.config, event)[1]}"
    if isinstance(event, LabelsArrived):
        data = event.new_data.describe() if event.new_data else "not counted"
        blocked = _retrain_block(run, event) if not row.effect else None
        return f"{row.note} ({', '.join(run.waiting_for_data)}; {data})" + (f": {blocked}" if blocked else "")
    if isinstance(event, AlarmChanged) and event.kind == "alarm.alarm" and row.target is row.state:
        blocked = _retrain_block(run, event) if not row.effect else None
        if blocked:
            return f"{row.note}: {event.alarm_name}: {blocked}"
        if row.effect:  # which alarm started the retraining run, and what it said
            return f"{row.note}: {event.alarm_name}" + (f": {event.reason}" if event.reason else "")
    if isinstance(event, (JobChanged, EndpointChanged)) and event.failure_reason:
        return f"{row.note}: {event.failure_reason}"
    if isinstance(event, ProcessingJobChanged) and event.details.get("exit_message"):
        # What the job said of its work (prepare: rows read, dropped and why, the holdout).
        return f"{row.note}: {event.details['exit_message']}"
    if isinstance(event, EndpointDeploymentChanged) and event.message:
        return f"{row.note}: {event.message}"
    if isinstance(event, TuningJobChanged) and row.target is not S.TUNING:
        best = f"best {event.best_training_job}; " if event.best_training_job else ""
        return f"{row.note}: {best}trials {tuning_counts(event)}"
    if isinstance(event, CommandFailed):
        return f"{row.note}: {event.command}: {event.error}"
    reason = getattr(event, "reason", "")
    return f"{row.note}: {reason}" if reason and isinstance(reason, str) and reason != row.note else row.note
