"""The service: load run → decide → conditional commit (with outbox) → execute commands."""

from __future__ import annotations

import base64
import dataclasses
import random
import secrets
import time as _time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import spec
from .domain import names
from .domain.commands import StartChildRun, StartProcessingJob
from .domain.events import (
    AlarmChanged,
    CommandFailed,
    DomainEvent,
    LabelsArrived,
    NewData,
    RetrainRequested,
    RunRequested,
    RunSuperseded,
    RunTimedOut,
    StopRequested,
)
from .domain.limits import UNLIMITED_ACTIVE_RUNS, Limits
from .domain.machine import DUPLICATE, Decision, decide
from .domain.project import ConfigError, check_project_name, normalise_config
from .domain.run import Run
from .domain.states import WORKING_STATES, RunState
from .domain.waits import SWEPT_STATES, overdue
from .executors import DeploymentPort, EvaluationPort, Executors, PermanentCommandError, SageMakerPort
from .intake import DatasetDrop
from .observability import logger, transition_segment
from .sagemaker import NOTHING_CAPTURED, run_capture_uri
from .store import (
    DONE,
    ConflictError,
    OutboxItem,
    Page,
    Project,
    ProjectRepository,
    RunRepository,
    StoredRun,
)

if TYPE_CHECKING:
    from .sweeper import ResourceProbe

Clock = Callable[[], datetime]
# (project, since, the run's dataset URI) → what the project holds that a run created at
# ``since`` did not learn from.
NewDataCount = Callable[[str, datetime, str], NewData]

# A slot claimed for a run not created this long after is one whose start failed.
SLOT_CLAIM_GRACE_S = 300
# Commits retried on ConflictError before giving up; under heavy contention each retry
# reloads the run and decides again (usually into a duplicate no-op).
MAX_COMMIT_ATTEMPTS = 64


class RunNotFoundError(spec.TuneloopError, LookupError):
    pass


class ProjectNotFoundError(spec.TuneloopError, LookupError):
    pass


class ProjectBusyError(spec.TuneloopError, RuntimeError):
    """The project has runs on their way: deleting it would strand their jobs."""


class RunLimitError(spec.TuneloopError, RuntimeError):
    """A new run would pass the stage's limit on runs on their way; the message names it."""


class InvalidRequestError(spec.TuneloopError, ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _may_need_new_data(run: Run, event: DomainEvent) -> bool:
    """Whether the new-data rule can decide this event: a monitoring alarm of the run going
    OK→ALARM, or labels for a run that waits, with no other run of the project on its way.
    Only then is S3 listed."""
    if isinstance(event, LabelsArrived):
        return bool(run.waiting_for_data) and event.active_retraining_run is None
    return (
        isinstance(event, AlarmChanged)
        and names.is_monitoring_alarm_of(event.alarm_name, run.run_id)
        and event.previous_state != "ALARM"
        and event.active_retraining_run is None
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[: names.RUN_ID_LENGTH]


@dataclass
class Applied:
    """What handling one event did, for logs and API answers."""

    run_id: str | None
    decision: Decision | None = None
    ignored: str = ""
    follow_ups: list[Applied] = field(default_factory=list)

    @property
    def state(self) -> RunState | None:
        return self.decision.run.state if self.decision else None


class RunService:
    def __init__(
        self,
        projects: ProjectRepository,
        runs: RunRepository,
        bucket: str,
        executors: Executors | None = None,
        clock: Clock = utcnow,
        outbox_stale_s: int = 60,
        dataset_prefix: str = "datasets/",
        sagemaker: SageMakerPort | None = None,
        evaluation: EvaluationPort | None = None,
        deployment: DeploymentPort | None = None,
        probe: ResourceProbe | None = None,
        sweep_grace_s: int = 300,
        sweep_batch: int = 25,
        sweep_budget_s: float = 30.0,
        offline_models: bool = False,
        limits: Limits | None = None,
        new_data: NewDataCount | None = None,
        stage: str = "",
        notices: Callable[[Decision, DomainEvent], None] | None = None,
    ) -> None:
        self.projects = projects
        # Told of every committed decision: a run waiting for approval, failed, rolled
        # back, or retraining because of an alarm makes a notice (notices.py).
        self.notices = notices
        # Why a new run may not start for the stage's monthly budget (budget.py), or None.
        self.budget: Callable[[], str | None] | None = None
        # The prefix of every name a run of this stage makes (names.prefix).
        self.stage = stage
        self.runs = runs
        # None: nothing counts new data (no bucket to look in), and alarms retrain as before.
        self.new_data = new_data
        self.bucket = bucket
        self.dataset_prefix = dataset_prefix
        self.executors = executors or Executors.default(self, sagemaker, evaluation, deployment)
        self.clock = clock
        self.outbox_stale_s = outbox_stale_s
        self.probe = probe
        self.sweep_grace_s = sweep_grace_s
        self.sweep_batch = sweep_batch
        self.sweep_budget_s = sweep_budget_s
        self.offline_models = offline_models
        self.limits = limits or Limits()

    # --- projects ------------------------------------------------------------------------

    def checked_config(self, config: Any, project: str) -> dict[str, Any]:
        """A complete config within this stage's limits, reading only what is the project's
        own (or shared under models/); ConfigError names the field."""
        normalised = normalise_config(config, self.offline_models)
        self.limits.check(normalised)
        self._check_base_model(normalised["base_model"], project)
        batch = normalised["deployment"]["batch_input_uri"]
        own = f"s3://{self.bucket}/batch/{project}/"
        if batch is not None and (not batch.startswith(own) or "/../" in batch or batch.endswith("/..")):
            raise ConfigError(
                "deployment.batch_input_uri", f"must be under {own} (the project's own batch inputs), got {batch!r}"
            )
        return normalised

    def _check_base_model(self, model: str, project: str) -> None:
        """An s3:// base model is one shared under models/, or a model one of the project's
        own runs made: a project cannot read another's data through its base model."""
        if not model.startswith("s3://"):
            return
        shared, runs = f"s3://{self.bucket}/models/", f"s3://{self.bucket}/runs/"
        if "/../" in model or model.endswith("/.."):
            raise ConfigError("base_model", "must not contain '..' segments")
        if model.startswith(shared):
            return
        if not model.startswith(runs):
            # SageMaker's execution role reads base models there and nowhere else.
            raise ConfigError("base_model", f"an s3:// base model must be under {shared} or a model of this "
                                            f"project's own runs ({runs}<run id>/…)")  # fmt: skip
        run_id = model[len(runs) :].split("/", 1)[0]
        stored = self.runs.get(run_id) if names.RUN_ID_RE.match(run_id) else None
        if stored is None or stored.run.project != project:
            owner = f"of project {stored.run.project!r}" if stored else "that no project has"
            raise ConfigError(
                "base_model",
                f"{model!r} is an output of run {run_id!r} {owner}: a project builds only on its own runs' "
                f"models, or on one shared under {shared} (copy it there to share it)",
            )

    def create_project(self, name: Any, config: Any, actor: str | None = None) -> Project:
        name = check_project_name(name)
        return self.projects.create(name, self.checked_config(config, name), self.clock(), actor)

    def update_project(self, name: str, config: Any, actor: str | None = None) -> Project:
        project = self.projects.update(name, self.checked_config(config, name), self.clock(), actor)
        if project is None:
            raise ProjectNotFoundError(name)
        return project

    def get_project(self, name: str) -> Project:
        project = self.projects.get(name)
        if project is None:
            raise ProjectNotFoundError(name)
        return project

    def list_projects(self, limit: int, next_token: str | None) -> Page:
        return self.projects.page(limit, next_token)

    def project_runs(self, name: str) -> list[Run]:
        runs: list[Run] = []
        token: str | None = None
        while True:
            page = self.runs.page(project=name, limit=100, next_token=token)
            runs += [stored.run for stored in page.items]
            token = page.next_token
            if not token:
                return runs

    def _budget_blocks(self, decision: Decision) -> str:
        """Why the month's budget stops the retraining run this decision would start, or ""
        (also when the spend cannot be read now: a retraining run is bounded by its daily cap,
        and the refusal would lose the alarm that asked for it)."""
        if self.budget is None or not any(isinstance(c, StartChildRun) for c in decision.commands):
            return ""
        try:
            return self.budget() or ""
        except Exception:
            logger.exception("budget not read; the retraining run starts", extra={"run_id": decision.run.run_id})
            return ""

    def check_budget(self) -> None:
        """Raise RunLimitError (with the figures) when the stage has spent its month's budget."""
        over = self.budget() if self.budget is not None else None
        if over:
            raise RunLimitError(over)

    def _check_active_runs(self, project: str) -> None:
        """Raise RunLimitError when the project, or the stage, has as many runs on their way
        as its limit allows."""
        per_project = self.limits.max_active_runs_per_project
        if per_project >= UNLIMITED_ACTIVE_RUNS and self.limits.max_active_runs >= UNLIMITED_ACTIVE_RUNS:
            return  # the stage sets no limit: nothing to count
        mine = [s.run.run_id for s in self.runs.page(project=project, limit=100).items
                if s.run.state in WORKING_STATES]  # fmt: skip
        if len(mine) >= per_project:
            raise RunLimitError(
                f"project {project} has {len(mine)} runs on their way ({', '.join(mine[:5])}); stage "
                f"{self.limits.stage} allows {per_project} per project (TUNELOOP_LIMIT_MAX_ACTIVE_RUNS_PER_PROJECT)"
            )
        limit = self.limits.max_active_runs
        if limit >= UNLIMITED_ACTIVE_RUNS:
            return
        counted = 0
        for state in WORKING_STATES:
            counted += len(self.runs.page(state=state, limit=limit).items)
            if counted >= limit:
                raise RunLimitError(
                    f"stage {self.limits.stage} has {counted} runs on their way; it allows {limit} "
                    "(TUNELOOP_LIMIT_MAX_ACTIVE_RUNS)"
                )

    def delete_project(
        self,
        name: str,
        tear_down: Callable[[str, Sequence[Run], bool], dict[str, Any]] | None,
        delete_models: bool = False,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Stop serving, delete what the project's runs made (tear_down), then the project.
        Refused while a run is on its way (its job would be stranded); its runs stay, as
        history. Returns what was deleted and what was kept."""
        self.get_project(name)
        runs = self.project_runs(name)
        busy = [r for r in runs if not r.state.terminal and r.state is not RunState.DEPLOYED]
        if busy:
            listed = ", ".join(f"{r.run_id} ({r.state.value})" for r in busy[:5])
            raise ProjectBusyError(f"project {name!r} has runs on their way: {listed}; stop or reject them first")
        inventory: dict[str, Any] = tear_down(name, runs, delete_models) if tear_down else {"deleted": {}, "kept": {}}
        # The deployed run stops serving (its own DeleteEndpoint finds the endpoint gone).
        for run in runs:
            if run.state is RunState.DEPLOYED:
                stop = StopRequested(event_id=f"project-deleted-{run.run_id}", time=self.clock(), run_id=run.run_id,
                                     reason=f"project {name} deleted", actor=actor, stop_serving=True)  # fmt: skip
                self.apply(run.run_id, stop)
        self.projects.delete(name)
        inventory.setdefault("kept", {})["runs"] = [r.run_id for r in runs]
        return {"project": name, **inventory}

    # --- starting runs ---------------------------------------------------------------------

    def check_dataset_uri(self, uri: Any, project: str) -> str:
        """Only the project's own datasets: a run of one project never reads another's."""
        if not isinstance(uri, str) or not uri:
            raise InvalidRequestError("dataset_uri", "must be a non-empty string")
        prefix = f"s3://{self.bucket}/{self.dataset_prefix}{project}/"
        if not uri.startswith(prefix) or len(uri) == len(prefix):
            raise InvalidRequestError("dataset_uri", f"must be an object or prefix under {prefix}, got {uri!r}")
        if any(ord(ch) < 32 for ch in uri) or "/../" in uri or uri.endswith("/.."):
            raise InvalidRequestError("dataset_uri", "must not contain control characters or '..' segments")
        return uri

    def start_run(
        self,
        project_name: str,
        dataset_uri: str,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        reason: str = "",
        event_time: datetime | None = None,
        actor: str | None = None,
    ) -> tuple[StoredRun, bool]:
        """Create a run and start it. Returns (run, created); an existing run id is not redone."""
        project = self.get_project(project_name)
        run_id = run_id or new_run_id()
        existing = self.runs.get(run_id)
        if existing is not None:
            return existing, False
        try:
            # A project stored by an older tuneloop gets today's defaults (split, gates...),
            # and the stage's limits as they are now.
            config = normalise_config(project.config)
            self.limits.check(config)
        except ConfigError as exc:
            raise InvalidRequestError(
                f"project {project.name}: config.{exc.field}",
                f"{exc.message} (the config predates a rule or limit; fix it with PUT /projects/{project.name})",
            ) from exc
        if parent_run_id is None:
            self._check_active_runs(project.name)
        # Retraining runs too: past the month's budget no run starts, whoever asks.
        self.check_budget()
        if parent_run_id is None:
            self._claim_slot(project.name, run_id)
        now = self.clock()
        when = event_time or now
        run = Run(
            run_id=run_id,
            project=project.name,
            state=RunState.RECEIVED,
            config=config,
            dataset_uri=dataset_uri,
            created_at=now,
            parent_run_id=parent_run_id,
            stage=self.stage,
        )
        event = RunRequested(
            event_id=f"request-{run_id}",
            time=when,
            run_id=run_id,
            project=project.name,
            dataset_uri=dataset_uri,
            parent_run_id=parent_run_id,
            reason=reason,
            actor=actor,
        )
        decision = decide(run, event)
        try:
            stored = self.runs.commit(None, decision, now)
        except ConflictError:
            existing = self.runs.get(run_id)
            assert existing is not None
            return existing, False
        except Exception:
            if parent_run_id is None:  # no run holds the slot it claimed
                self._release_slot(run)
            raise
        with self._transition(decision, event):
            self._execute_outbox(stored)
        return self.runs.get(run_id) or stored, True

    def intake(self, drop: DatasetDrop) -> Applied:
        """An S3 upload that completes a dataset starts one run (redeliveries start none)."""
        try:
            stored, created = self.start_run(
                drop.project,
                drop.dataset_uri,
                run_id=drop.idempotency_key,
                reason=f"dataset {drop.dataset_id} dropped at {drop.dataset_uri}",
                event_time=drop.time,
            )
        except ProjectNotFoundError:
            logger.warning("dataset for unknown project ignored", extra={"project": drop.project, "key": drop.key})
            return Applied(None, ignored=f"no project named {drop.project!r}")
        except InvalidRequestError as exc:
            logger.warning("dataset for a project whose config is invalid ignored", extra={"reason": str(exc)})
            return Applied(None, ignored=str(exc))
        except RunLimitError as exc:
            logger.warning("dataset refused: a run limit is reached", extra={"reason": str(exc), "key": drop.key})
            return Applied(None, ignored=str(exc))
        if not created:
            logger.info("dataset already started a run", extra={"run_id": stored.run.run_id, "key": drop.key})
            return Applied(stored.run.run_id, ignored="duplicate delivery: run already started")
        return Applied(stored.run.run_id)

    # --- events --------------------------------------------------------------------------

    def handle(self, event: DomainEvent) -> Applied:
        """Apply an AWS (or internal) event to the run it concerns."""
        run_id = self._resolve(event)
        if run_id is None:
            logger.info("event matches no run; ignored", extra={"event_id": event.event_id, "kind": event.kind})
            return Applied(None, ignored=f"no run for {event.kind} on {event.resource}")
        try:
            return self.apply(run_id, event)
        except RunNotFoundError:
            logger.warning(
                "event names a run that does not exist; ignored", extra={"run_id": run_id, "kind": event.kind}
            )
            return Applied(None, ignored=f"no run {run_id}")

    def apply(self, run_id: str, event: DomainEvent) -> Applied:
        # Decide on this process's latest copy of the run when it has one (a read saved
        # per event); the commit is conditional on that copy's version, so a stale copy
        # costs a conflict and a read, never a wrong write.
        newer_than = -1
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            stored = self.runs.recent(run_id, newer_than)
            if stored is None:
                raise RunNotFoundError(run_id)
            facts = self._with_project_facts(stored.run, event)
            decision = decide(stored.run, facts)
            spent = self._budget_blocks(decision)
            if spent and isinstance(facts, (AlarmChanged, RetrainRequested, LabelsArrived)):
                # The one retraining check that costs Describe calls: made only when it matters.
                decision = decide(stored.run, dataclasses.replace(facts, budget_spent=spent))
            if not decision.changed and stored.cached and decision.noop != DUPLICATE:
                # Only "already applied" holds on any later version (history only grows);
                # anything else that changes nothing is confirmed on the table.
                newer_than = stored.version
                continue
            if not decision.changed:
                logger.info(
                    "event changes nothing",
                    extra={
                        "run_id": run_id,
                        "event_id": event.event_id,
                        "kind": event.kind,
                        "noop": decision.noop,
                        "reason": decision.note,
                    },
                )
                return Applied(run_id, decision)
            try:
                committed = self.runs.commit(stored, decision, self.clock())
            except ConflictError:
                # Someone else committed first: decide again on a newer version (this
                # process's, if one of its threads won; else the table's). Back off a
                # little when the table's own latest copy lost.
                if not stored.cached:
                    _time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
                newer_than = stored.version
                continue
            stored = committed
            with self._transition(decision, event):
                follow_ups = self._execute_outbox(stored)
            return Applied(run_id, decision, follow_ups=follow_ups)
        raise ConflictError(f"run {run_id}: gave up after {MAX_COMMIT_ATTEMPTS} conflicting commits")

    def _with_project_facts(self, run: Run, event: DomainEvent) -> DomainEvent:
        """What decide() cannot look up itself: the project's other retraining runs (one may
        be on its way; the cooldown and the daily cap count them all, not this run's alone)."""
        relevant = event.kind in ("alarm.alarm", "retrain.requested", "labels.arrived")
        triggers = (AlarmChanged, RetrainRequested, LabelsArrived)
        if run.state is not RunState.DEPLOYED or not relevant or not isinstance(event, triggers):
            return event
        if isinstance(event, LabelsArrived) and not run.waiting_for_data:
            return event  # nothing waits: no lookups
        active, starts, latest = self.runs.retraining_facts(run.project, since=event.time - timedelta(days=1))
        event = dataclasses.replace(event, active_retraining_run=active, project_retraining_starts=starts)
        if (
            self.new_data is not None
            and isinstance(event, (AlarmChanged, LabelsArrived))
            and _may_need_new_data(run, event)
        ):
            # What the run has not learned from: labels received and datasets dropped since
            # it read its data, or since the project's last retraining run did (a retrain the
            # gate rejected has used them: they start no second one).
            since = max(run.created_at, latest) if latest else run.created_at
            try:
                counted = self.new_data(run.project, since, run.dataset_uri)
            except Exception:  # S3 unreadable: the guards decide without it, as with no bucket
                logger.exception("new data not counted", extra={"run_id": run.run_id})
            else:
                event = dataclasses.replace(event, new_data=counted)
        return event

    def data_arrived(self, project: str, event_id: str) -> int:
        """Labels arrived for ``project``: each deployed run whose retraining waits for data
        looks again (``event_id`` per delivery, so a redelivery is one).
        Returns how many retraining runs that started."""
        started = 0
        for run_id in self.runs.deployed_runs(project):
            event = LabelsArrived(event_id=f"{event_id}-{run_id}", time=self.clock(), run_id=run_id)
            decision = self.apply(run_id, event).decision
            if decision is not None and decision.changed and decision.commands:
                started += 1
        return started

    def _resolve(self, event: DomainEvent) -> str | None:
        if event.kind.startswith("endpoint") and event.resource:
            # The project's endpoint outlives runs: its events concern the run deploying to
            # it, whichever run's config the event happens to name (a rollback names the old).
            waiting = self.runs.find_awaiting(event.resource)
            if waiting:
                return waiting[0]
        if event.run_id:
            return event.run_id
        if event.resource:
            found = self.runs.find_awaiting(event.resource)
            if found:
                return found[0]
        return None

    # --- outbox --------------------------------------------------------------------------

    def _execute_outbox(self, stored: StoredRun) -> list[Applied]:
        if not stored.pending:
            return []
        items: list[OutboxItem] = []
        follow_ups: list[DomainEvent] = []
        for item in stored.outbox:
            if item.status == DONE:
                items.append(item)
                continue
            try:
                outcome = self.executors.execute(item.command, stored.run)
            except PermanentCommandError as exc:
                items.append(OutboxItem(item.command, DONE, f"failed: {exc}"))
                follow_ups.append(
                    CommandFailed(
                        event_id=f"failed-{stored.outbox_event_id}-{type(item.command).__name__}",
                        time=self.clock(),
                        run_id=stored.run.run_id,
                        command=type(item.command).__name__,
                        error=str(exc),
                    )
                )
                continue
            except Exception as exc:  # transient: leave it for the reconciler
                logger.exception("command failed; left for the reconciler", extra={"run_id": stored.run.run_id})
                items.append(OutboxItem(item.command, item.status, f"error: {type(exc).__name__}: {exc}"))
                continue
            items.append(OutboxItem(item.command, DONE if outcome.done else item.status, outcome.note))
            follow_ups.extend(outcome.events)
        if items != list(stored.outbox):
            try:
                self.runs.record_outbox(stored, items)
            except ConflictError:
                logger.info("outbox replaced by a newer decision", extra={"run_id": stored.run.run_id})
        return [self.apply(stored.run.run_id if e.run_id is None else e.run_id, e) for e in follow_ups]

    def reconcile(self) -> dict[str, int]:
        """Re-execute outboxes left unfinished (crash, throttling, pending work), then sweep
        runs whose events never came."""
        now = self.clock()
        checked = finished = 0
        for run_id in list(self.runs.stale_outboxes(now - timedelta(seconds=self.outbox_stale_s))):
            stored = self.runs.get(run_id)
            if stored is None or not stored.pending:
                continue
            checked += 1
            self._execute_outbox(stored)
            refreshed = self.runs.get(run_id)
            if refreshed is not None and not refreshed.pending:
                finished += 1
        return {"checked": checked, "finished": finished, **self.sweep()}

    def sweep(self) -> dict[str, int]:
        """Runs that have waited on a resource past the grace period: ask SageMaker where it
        is and apply what it says as the event that was lost; end runs past their state's
        time limit. At most ``sweep_batch`` runs and ``sweep_budget_s`` per call, the runs
        asked about longest ago first, so no run is starved by another that is slow."""
        now = self.clock()
        started = _time.monotonic()
        waiting = self.runs.waiting(SWEPT_STATES, now - timedelta(seconds=self.sweep_grace_s))
        epoch = datetime.min.replace(tzinfo=UTC)
        waiting.sort(key=lambda s: (s.swept_at or epoch, s.updated_at or epoch))
        counts = {"swept": 0, "moved": 0, "timed_out": 0, "sweep_errors": 0}
        for stored in waiting[: self.sweep_batch]:
            if _time.monotonic() - started > self.sweep_budget_s:
                break
            counts["swept"] += 1
            self.runs.mark_swept(stored.run.run_id, now)
            try:
                outcome = self._sweep_one(stored.run.run_id, now)
            except Exception:  # one run's trouble stops no other run's sweep
                logger.exception(
                    "sweeping the run failed; the next tick tries again", extra={"run_id": stored.run.run_id}
                )
                counts["sweep_errors"] += 1
                continue
            if outcome:
                counts[outcome] += 1
        return counts

    def _sweep_one(self, run_id: str, now: datetime) -> str | None:
        stored = self.runs.get(run_id)
        if stored is None or stored.run.state not in SWEPT_STATES or stored.pending:
            return None  # moved on meanwhile, or waiting on its own outbox (re-executed above)
        run = stored.run
        if self.probe is not None:
            event = self.probe.observe(run, now)
            if event is not None:
                decision = self.apply(run_id, event).decision
                if decision is not None and decision.changed:
                    logger.info("the sweeper applied a lost event", extra={"run_id": run_id, "event_id": event.event_id,
                                "kind": event.kind})  # fmt: skip
                    return "moved"
        late = overdue(run, now)
        if late is None:
            return None
        waited, limit = late
        timeout = RunTimedOut(
            event_id=f"timeout-{run_id}-{run.state.value}-{len(run.history)}",
            time=now,
            run_id=run_id,
            state=run.state.value,
            waited_s=waited,
            limit_s=limit,
            awaiting=run.awaiting,
        )
        decision = self.apply(run_id, timeout).decision
        return "timed_out" if decision is not None and decision.changed else None

    def check_drift(self, force: bool = False, project: str | None = None) -> dict[str, Any]:
        """Start the drift check of every deployed run whose schedule window has none yet.

        Monitoring, not a step of the run: the job's name is derived from the window
        (``tl-<stage>-<run>-drift-<window>``), so a repeat in the same window finds ResourceInUse,
        and its metrics reach the run only through its drift alarms. ``force`` checks now,
        at most ``limits.max_drift_checks_per_hour`` times an hour: forced checks share
        slots of an hour's share, and a second in the same slot is a repeat (``repeated``;
        ``next_at`` says when the next slot opens).
        """
        now = self.clock()
        started = failed = repeated = idle = 0
        slot = self.limits.drift_slot_s
        page = self.runs.page(project=project, state=RunState.DEPLOYED, limit=100)
        while True:
            for stored in page.items:
                run = stored.run
                minutes = int(run.config["drift"]["schedule_minutes"])
                if run.waiting_for_data:
                    # Its retraining waits for data: look again once a window, so a lost
                    # arrival (or a cooldown that has since passed) still starts it.
                    looked = int(now.timestamp() // (minutes * 60))
                    try:
                        self.apply(run.run_id, LabelsArrived(event_id=f"data-check-{looked}", time=now,
                                                             run_id=run.run_id, scheduled=True))  # fmt: skip
                    except Exception:
                        logger.exception("new data not looked for", extra={"run_id": run.run_id})
                window = int(now.timestamp() // slot) if force else int(now.timestamp() // (minutes * 60))
                name = names.job_name(run.run_id, "drift", window, stage=run.stage)
                command = StartProcessingJob(
                    run.run_id,
                    run.project,
                    name,
                    step="drift",
                    # What this run's model answered, nothing its predecessor did.
                    input_uri=f"{run_capture_uri(self.bucket, run)}/",
                )
                try:
                    outcome = self.executors.execute(command, run)
                    if outcome.done and (outcome.note or "").startswith(NOTHING_CAPTURED):
                        idle += 1
                    elif outcome.done and "repeat" in (outcome.note or ""):
                        repeated += 1
                    elif outcome.done:
                        started += 1
                except Exception:  # the next window tries again; one run's failure stops no other
                    logger.exception("drift check not started", extra={"run_id": run.run_id})
                    failed += 1
            if not page.next_token:
                break
            page = self.runs.page(project=project, state=RunState.DEPLOYED, limit=100, next_token=page.next_token)
        result: dict[str, Any] = {"started": started, "failed": failed}
        if idle:
            result["nothing_captured"] = idle
        if repeated:
            result["repeated"] = repeated
            opens = datetime.fromtimestamp((int(now.timestamp() // slot) + 1) * slot, UTC)
            result["next_at"] = opens.isoformat()
        return result

    # --- internal commands (RunPort) ---------------------------------------------------------

    def supersede_deployed(self, project: str, by_run_id: str) -> int:
        count = 0
        for run_id in self.runs.deployed_runs(project):
            if run_id == by_run_id:
                continue
            event = RunSuperseded(
                event_id=f"superseded-by-{by_run_id}", time=self.clock(), run_id=run_id, by_run_id=by_run_id
            )
            if self.apply(run_id, event).decision:
                count += 1
        return count

    def feedback_project(self, name: str) -> Project:
        """The project feedback is sent for: it exists, and its task takes feedback."""
        project = self.get_project(name)
        task = project.config.get("task") if isinstance(project.config, dict) else None
        if task not in spec.FEEDBACK_FIELDS:
            raise InvalidRequestError("project", f"{name!r} is a {task} project; feedback is for "
                                      f"{', '.join(spec.FEEDBACK_FIELDS)} projects")  # fmt: skip
        return project

    def current_data(self, run: Run) -> str:
        """What a retraining run of ``run`` trains on: every dataset dropped for the project
        so far (the parent's and any newer), when the parent's came in through the drop
        prefix; otherwise the parent's own dataset. prepare.py reads every data file under it."""
        project_prefix = f"s3://{self.bucket}/{self.dataset_prefix}{run.project}/"
        return project_prefix if run.dataset_uri.startswith(project_prefix) else run.dataset_uri

    def start_child_run(self, parent_run_id: str, child_run_id: str, reason: str) -> str:
        """Start the retraining run; returns what happened, for the parent's outbox note. Past
        the budget nothing starts and the parent (still serving) stays as it is."""
        parent = self.runs.get(parent_run_id)
        if parent is None:
            raise PermanentCommandError(f"parent run {parent_run_id} is gone")
        try:
            stored, _ = self.start_run(
                parent.run.project,
                self.current_data(parent.run),
                run_id=child_run_id,
                parent_run_id=parent_run_id,
                reason=reason,
            )
        except InvalidRequestError as exc:
            raise PermanentCommandError(str(exc)) from exc
        except RunLimitError as exc:
            logger.warning("retraining run not started", extra={"run_id": parent_run_id, "reason": str(exc)})
            return f"no child run: {exc}"
        return f"child run {stored.run.run_id}"

    # --- logging -------------------------------------------------------------------------

    @contextmanager
    def _transition(self, decision: Decision, event: DomainEvent) -> Iterator[None]:
        """Trace and log a committed transition; the commands it issued run inside."""
        run = decision.run
        from_state = decision.from_state.value if decision.from_state else ""
        with transition_segment(run.run_id, run.project, from_state, run.state.value, event.kind):
            logger.info(
                "run transition",
                extra={
                    "run_id": run.run_id,
                    "project": run.project,
                    "from_state": from_state,
                    "to_state": run.state.value,
                    "event_id": event.event_id,
                    "kind": event.kind,
                    "commands": [type(c).__name__ for c in decision.commands],
                    "reason": decision.note,
                },
            )
            try:
                yield
            finally:
                if decision.from_state in WORKING_STATES and run.state not in WORKING_STATES:
                    self._release_slot(run)
        if self.notices is not None:
            self.notices(decision, event)

    def _release_slot(self, run: Run) -> None:
        try:
            self.projects.release_slot(run.project, run.run_id)
        except Exception:  # a slot left behind is found stale by the next claim that needs it
            logger.exception("slot not released", extra={"run_id": run.run_id, "project": run.project})

    def _claim_slot(self, project: str, run_id: str) -> None:
        """Take one of the project's slots for runs on their way (atomic: concurrent drops
        cannot pass the cap together). Slots of runs no longer on their way (a release that
        was lost) are freed first when the cap is met."""
        limit = self.limits.max_active_runs_per_project
        now = self.clock()
        if limit >= UNLIMITED_ACTIVE_RUNS or self.projects.claim_slot(project, run_id, limit, now):
            return
        for held, claimed in sorted(self.projects.slots(project).items()):
            stored = self.runs.get(held)
            if stored is not None:
                stale = stored.run.state not in WORKING_STATES
            else:  # claimed, not created: its start is under way, unless it is long past
                try:
                    stale = now - datetime.fromisoformat(claimed) > timedelta(seconds=SLOT_CLAIM_GRACE_S)
                except (TypeError, ValueError):
                    stale = True
            if stale:
                self.projects.release_slot(project, held)
        if self.projects.claim_slot(project, run_id, limit, now):
            return
        live = sorted(self.projects.slots(project))
        raise RunLimitError(
            f"project {project} has {len(live)} runs on their way ({', '.join(live[:5])}); stage "
            f"{self.limits.stage} allows {limit} per project (TUNELOOP_LIMIT_MAX_ACTIVE_RUNS_PER_PROJECT)"
        )
