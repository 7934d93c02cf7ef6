"""The repository: loads runs and commits decisions with one conditional write each."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynamodb.exceptions import DeleteError, DoesNotExist, PutError, UpdateError
from pynamodb.expressions.condition import size

from . import spec
from .domain.commands import Command, command_from_dict
from .domain.machine import Decision
from .domain.run import HistoryEntry, Run
from .domain.states import RunState
from .models import OUTBOX_PENDING, HistoryAttribute, ProjectModel, RunModel


class ConflictError(spec.TuneloopError):
    """Another writer changed the item first; reload and decide again."""


class ProjectExistsError(spec.TuneloopError):
    pass


class BadPageTokenError(spec.TuneloopError, ValueError):
    pass


PENDING = "pending"
DONE = "done"


@dataclass(frozen=True)
class OutboxItem:
    command: Command
    status: str = PENDING
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command.to_dict(), "status": self.status, "note": self.note}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutboxItem:
        return cls(command_from_dict(data["command"]), data.get("status", PENDING), data.get("note", ""))


@dataclass(frozen=True)
class StoredRun:
    run: Run
    version: int
    outbox: tuple[OutboxItem, ...] = ()
    outbox_event_id: str | None = None
    outbox_since: datetime | None = None
    updated_at: datetime | None = None
    swept_at: datetime | None = None
    # Read from the repository's copy of what it last wrote or read, not from the table:
    # the table may be newer (see RunRepository.recent).
    cached: bool = field(default=False, compare=False)

    @property
    def pending(self) -> tuple[OutboxItem, ...]:
        return tuple(item for item in self.outbox if item.status != DONE)


@dataclass(frozen=True)
class Project:
    name: str
    config: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    version: int
    updated_by: str | None = None


@dataclass(frozen=True)
class Page:
    items: Sequence[Any]
    next_token: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _encode_token(key: Mapping[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode().rstrip("=")


def _decode_token(token: str | None, attributes: frozenset[str], **fixed: str) -> dict[str, Any] | None:
    """The start key a page token carries, checked against the listing it continues: exactly
    ``attributes`` (the table's or index's key), each a DynamoDB string, and the ``fixed``
    ones (the queried project or state) equal to what is queried. A forged token is a 400
    here, never a start key DynamoDB refuses (a 500)."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadPageTokenError("next_token is not a token this API issued") from exc
    if (
        not isinstance(data, dict)
        or set(data) != attributes
        or not all(_is_key_string(value) for value in data.values())
        or any(data[name]["S"] != value for name, value in fixed.items())
    ):
        raise BadPageTokenError("next_token is not a token this API issued for this listing")
    return data


def _is_key_string(value: Any) -> bool:
    if not isinstance(value, dict) or set(value) != {"S"} or not isinstance(value["S"], str):
        return False
    text = value["S"]
    return 0 < len(text) <= 1024 and not any(ord(ch) < 32 for ch in text)


PROJECT_KEY = frozenset({"name"})
RUN_KEY = frozenset({"run_id"})
BY_PROJECT_KEY = RUN_KEY | {"project", "created_at"}
BY_STATE_KEY = RUN_KEY | {"state", "updated_at"}


def _is_condition_failure(exc: PutError | UpdateError | DeleteError) -> bool:
    return exc.cause_response_code == "ConditionalCheckFailedException"


class ProjectRepository:
    def __init__(self, model: type[ProjectModel] = ProjectModel) -> None:
        self._model = model

    def create(self, name: str, config: Mapping[str, Any], now: datetime, actor: str | None = None) -> Project:
        item = self._model(name, config=dict(config), created_at=now, updated_at=now, updated_by=actor)
        try:
            item.save()  # VersionAttribute: conditional on the item not existing yet
        except PutError as exc:
            if _is_condition_failure(exc):
                raise ProjectExistsError(name) from exc
            raise
        return self._project(item)

    def update(self, name: str, config: Mapping[str, Any], now: datetime, actor: str | None = None) -> Project | None:
        item = self._load(name)
        if item is None:
            return None
        model = self._model
        try:
            # UpdateItem of the config's own fields (conditional on the version read): a
            # PutItem would write back the project's slots as they were read.
            who = model.updated_by.set(actor) if actor is not None else model.updated_by.remove()
            item.update(actions=[model.config.set(dict(config)), model.updated_at.set(now), who])
        except UpdateError as exc:
            if _is_condition_failure(exc):
                raise ConflictError(name) from exc
            raise
        return self._project(item)

    def get(self, name: str) -> Project | None:
        item = self._load(name)
        return self._project(item) if item else None

    def claim_slot(self, name: str, run_id: str, limit: int, now: datetime) -> bool:
        """Record ``run_id`` (claimed at ``now``) among the project's runs on their way if
        fewer than ``limit`` are there: one conditional update, so two concurrent claims
        never both pass the last slot. A slot is not a config change: no version bump."""
        field = self._model.active_runs
        connection = self._model._get_connection()
        try:
            connection.update_item(name, actions=[field.set(field | {})], condition=self._model.name.exists())
            connection.update_item(
                name,
                actions=[field[run_id].set(now.isoformat())],
                condition=self._model.name.exists() & (field[run_id].exists() | (size(field) < limit)),
            )
        except UpdateError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def release_slot(self, name: str, run_id: str) -> None:
        field = self._model.active_runs
        try:
            self._model._get_connection().update_item(
                name, actions=[field[run_id].remove()], condition=self._model.name.exists() & field.exists()
            )
        except UpdateError as exc:
            if not _is_condition_failure(exc):  # the project (or its slots) are gone: nothing to release
                raise

    def slots(self, name: str) -> dict[str, str]:
        """The project's runs on their way: run id -> when its slot was claimed."""
        item = self._load(name)
        found = item.active_runs.as_dict() if item is not None and item.active_runs is not None else {}
        return {str(k): str(v) for k, v in found.items()}

    def delete(self, name: str) -> None:
        """Delete the project as it was read (its version): a change meanwhile is a conflict."""
        item = self._load(name)
        if item is None:
            return
        try:
            item.delete()
        except DeleteError as exc:
            if _is_condition_failure(exc):
                raise ConflictError(name) from exc
            raise

    def page(self, limit: int = 50, next_token: str | None = None) -> Page:
        result = self._model.scan(limit=limit, last_evaluated_key=_decode_token(next_token, PROJECT_KEY))
        items = [self._project(item) for item in result]
        return Page(items, _encode_token(result.last_evaluated_key))

    def _load(self, name: str) -> ProjectModel | None:
        try:
            return self._model.get(name, consistent_read=True)
        except DoesNotExist:
            return None

    @staticmethod
    def _project(item: ProjectModel) -> Project:
        return Project(
            item.name, item.config, item.created_at, item.updated_at, int(item.version or 0), item.updated_by
        )


class RunRepository:
    # How many runs' latest versions a process keeps (a few KB each).
    RECENT_RUNS = 1024

    def __init__(self, model: type[RunModel] = RunModel) -> None:
        self._model = model
        self._recent: OrderedDict[str, StoredRun] = OrderedDict()
        self._recent_lock = threading.Lock()

    # --- reads ---------------------------------------------------------------------------

    def get(self, run_id: str) -> StoredRun | None:
        """The run as the table holds it now (a strongly consistent read)."""
        try:
            item = self._model.get(run_id, consistent_read=True)
        except DoesNotExist:
            return None
        stored = self._stored(item)
        self._remember(stored)
        return stored

    def recent(self, run_id: str, newer_than: int = -1) -> StoredRun | None:
        """The latest version of the run this process wrote or read, if newer than
        ``newer_than``, marked ``cached``; else the table's (``get``).

        Only for deciding what to commit: every commit is conditional on the version it
        was decided on, and every write of a run's state bumps the version, so a copy
        that another writer has overtaken fails its commit (ConflictError) and is read
        again; it never writes. A decision that changes nothing must be confirmed on the
        table unless it could not differ there (see RunService.apply).
        """
        with self._recent_lock:
            known = self._recent.get(run_id)
            if known is not None:
                self._recent.move_to_end(run_id)
        if known is not None and known.version > newer_than:
            return dataclasses.replace(known, cached=True)
        return self.get(run_id)

    def _remember(self, stored: StoredRun) -> None:
        run_id = stored.run.run_id
        with self._recent_lock:
            known = self._recent.get(run_id)
            if known is not None and known.version > stored.version:
                return  # a slower reader must not put an older version back
            self._recent[run_id] = dataclasses.replace(stored, cached=False)
            self._recent.move_to_end(run_id)
            while len(self._recent) > self.RECENT_RUNS:
                self._recent.popitem(last=False)

    def _forget(self, run_id: str, version: int) -> None:
        """Drop the copy of ``version`` (a commit found the table past it)."""
        with self._recent_lock:
            known = self._recent.get(run_id)
            if known is not None and known.version <= version:
                del self._recent[run_id]

    def find_awaiting(self, resource: str) -> list[str]:
        """Ids of runs waiting on ``resource`` (eventually consistent index)."""
        return [item.run_id for item in self._model.by_awaiting.query(resource)]

    def page(
        self,
        project: str | None = None,
        state: RunState | None = None,
        limit: int = 50,
        next_token: str | None = None,
    ) -> Page:
        if project:
            condition = (self._model.state == state.value) if state else None
            start = _decode_token(next_token, BY_PROJECT_KEY, project=project)
            result = self._model.by_project.query(
                project, filter_condition=condition, scan_index_forward=False, limit=limit, last_evaluated_key=start
            )
        elif state:
            start = _decode_token(next_token, BY_STATE_KEY, state=state.value)
            result = self._model.by_state.query(
                state.value, scan_index_forward=False, limit=limit, last_evaluated_key=start
            )
        else:
            result = self._model.scan(limit=limit, last_evaluated_key=_decode_token(next_token, RUN_KEY))
        items = [self._stored(item) for item in result]
        return Page(items, _encode_token(result.last_evaluated_key))

    def stale_outboxes(self, older_than: datetime, limit: int = 100) -> Iterator[str]:
        for item in self._model.by_outbox.query(OUTBOX_PENDING, self._model.outbox_since < older_than, limit=limit):
            yield item.run_id

    def waiting(self, states: Sequence[RunState], unchanged_since: datetime, per_state: int = 200) -> list[StoredRun]:
        """Runs in ``states`` that have not changed since ``unchanged_since``: the oldest
        ``per_state`` of each state (eventually consistent index; reload before acting)."""
        found = []
        for state in states:
            query = self._model.by_state.query(state.value, self._model.updated_at < unchanged_since, limit=per_state)
            found += [self._stored(item) for item in query]
        return found

    def mark_swept(self, run_id: str, now: datetime) -> None:
        """Record that the sweeper asked about the run now (it goes to the back of the queue)."""
        try:
            self._model._get_connection().update_item(
                run_id,
                actions=[self._model.swept_at.set(now)],
                condition=self._model.run_id.exists(),
            )
        except UpdateError as exc:
            if not _is_condition_failure(exc):
                raise

    def deployed_runs(self, project: str) -> list[str]:
        return [
            item.run_id
            for item in self._model.by_project.query(
                project, filter_condition=self._model.state == RunState.DEPLOYED.value
            )
        ]

    def failed_datasets(self, project: str) -> list[tuple[str, str]]:
        """(dataset URI, why) for each of the project's datasets whose newest run failed in
        preparation: a retraining run leaves them out (a fixed re-upload starts a new run)."""
        newest: dict[str, RunModel] = {}
        for item in self._model.by_project.query(
            project, filter_condition=self._model.parent_run_id.does_not_exist(), scan_index_forward=False
        ):
            newest.setdefault(str(item.dataset_uri), item)
        failed = []
        for uri, item in sorted(newest.items()):
            if item.state != RunState.FAILED.value:
                continue
            run = self._stored(item).run
            ended = next((e for e in run.history if e.to_state is RunState.FAILED), None)
            if ended is not None and ended.from_state is RunState.PREPARING:
                failed.append((uri, f"its run {run.run_id} failed preparing: {ended.reason}"))
        return failed

    def retraining_facts(
        self, project: str, since: datetime
    ) -> tuple[str | None, tuple[datetime, ...], datetime | None]:
        """What the retraining guards need: a run of the project still on its way (a retraining
        run, or a run a dataset drop started), the creation times of the project's retraining
        runs since ``since``, and the newest retraining run's creation (whenever it was)."""
        busy = [state.value for state in RunState if state.terminal] + [RunState.DEPLOYED.value]
        # A drop's run waiting for a person holds nothing up (it has no time limit).
        idle = [*busy, RunState.PENDING_APPROVAL.value]
        active: str | None = None
        starts = []
        latest: datetime | None = None
        for item in self._model.by_project.query(project):
            if active is None and item.state not in (idle if item.parent_run_id is None else busy):
                active = str(item.run_id)
            if item.parent_run_id is None:
                continue
            if item.created_at >= since:
                starts.append(item.created_at)
            # Used the data there was at its creation: its prepare job read it and finished.
            read = any(h.from_state == RunState.PREPARING.value and h.to_state != RunState.FAILED.value
                       and h.to_state != RunState.STOPPED.value for h in item.history or ())  # fmt: skip
            if read:
                latest = item.created_at if latest is None else max(latest, item.created_at)
        return active, tuple(sorted(starts)), latest

    def champion(self, project: str, excluding: str) -> Run | None:
        """The project's deployed run (not ``excluding``) whose model a challenger must beat."""
        for run_id in self.deployed_runs(project):
            stored = self.get(run_id) if run_id != excluding else None
            if stored is not None and stored.run.model_source:
                return stored.run
        return None

    # --- writes --------------------------------------------------------------------------

    def commit(self, stored: StoredRun | None, decision: Decision, now: datetime) -> StoredRun:
        """One conditional write: new state + history entry + outbox of the decision's commands.

        ``stored`` is None for a new run (the write then requires the item not to exist).
        Raises ConflictError when someone else wrote first.
        """
        run = decision.run
        item = self._item(run, now)
        carried = self.carried_over(stored, run) if stored else ()
        outbox = carried + tuple(OutboxItem(command) for command in decision.commands)
        if outbox:
            item.outbox = [entry.to_dict() for entry in outbox]
            item.outbox_pending = OUTBOX_PENDING
            if decision.commands:
                item.outbox_event_id = run.history[-1].event_id
                item.outbox_since = now
            else:
                assert stored is not None
                item.outbox_event_id = stored.outbox_event_id
                item.outbox_since = stored.outbox_since
        condition = None
        if stored is not None:
            item.version = stored.version
            condition = self._model.state == stored.run.state.value
        try:
            item.save(condition=condition)
        except PutError as exc:
            if _is_condition_failure(exc):
                if stored is not None:
                    self._forget(run.run_id, stored.version)
                raise ConflictError(run.run_id) from exc
            raise
        committed = self._stored(item)
        self._remember(committed)  # exactly what the table holds at this version
        return committed

    @staticmethod
    def carried_over(stored: StoredRun, run: Run) -> tuple[OutboxItem, ...]:
        """Unfinished commands of earlier decisions that still need to run.

        A start command for a job the run no longer waits on is obsolete (the run moved
        on: the job did start, or the run was stopped) and is dropped; everything else
        an earlier decision asked for is kept, so no side effect is lost.
        """
        return tuple(
            item for item in stored.pending if not (item.command.starts_job and item.command.awaits != run.awaiting)
        )

    def record_outbox(self, stored: StoredRun, items: Sequence[OutboxItem]) -> None:
        """Store the outcome of executing the outbox; clear it when every command is done.

        Conditional on the outbox still being the one executed, so a newer decision's
        outbox is never overwritten.
        """
        done = all(entry.status == DONE for entry in items)
        actions = [
            self._model.outbox.set([entry.to_dict() for entry in items]),
            # The version still goes up, so a writer holding an older copy of the run
            # cannot put the executed outbox back.
            self._model.version.add(1),
        ]
        if done:
            actions += [self._model.outbox_pending.remove(), self._model.outbox_since.remove()]
        try:
            # Conditional on the outbox, not the version: a decision that kept this outbox
            # may have committed meanwhile. Only the new version comes back.
            response = self._model._get_connection().update_item(
                stored.run.run_id,
                actions=actions,
                condition=self._model.outbox_event_id == stored.outbox_event_id,
                return_values="UPDATED_NEW",
            )
        except UpdateError as exc:
            if _is_condition_failure(exc):
                self._forget(stored.run.run_id, stored.version)
                raise ConflictError(stored.run.run_id) from exc
            raise
        version = int(response.get("Attributes", {}).get("version", {}).get("N", -1))
        if version == stored.version + 1:
            # Nobody wrote in between: the table holds ``stored`` with this outbox.
            self._remember(
                dataclasses.replace(
                    stored, version=version, outbox=tuple(items), outbox_since=None if done else stored.outbox_since
                )
            )
        else:
            self._forget(stored.run.run_id, max(version, stored.version))

    # --- mapping -------------------------------------------------------------------------

    def _item(self, run: Run, now: datetime) -> RunModel:
        return self._model(
            run.run_id,
            project=run.project,
            state=run.state.value,
            config=dict(run.config),
            dataset_uri=run.dataset_uri,
            created_at=run.created_at,
            updated_at=now,
            parent_run_id=run.parent_run_id,
            awaiting=run.awaiting,
            model_source=run.model_source,
            package_arn=run.package_arn,
            metrics=dict(run.metrics),
            waiting_for_data=list(run.waiting_for_data),
            stage=run.stage or None,
            history=[
                HistoryAttribute(
                    event_id=e.event_id,
                    event_kind=e.event_kind,
                    from_state=e.from_state.value,
                    to_state=e.to_state.value,
                    reason=e.reason,
                    time=e.time,
                    commands=list(e.commands),
                    awaits=e.awaits,
                    key=e.key,
                    actor=e.actor,
                )
                for e in run.history
            ],
        )

    @staticmethod
    def _stored(item: RunModel) -> StoredRun:
        run = Run(
            run_id=item.run_id,
            project=item.project,
            state=RunState(item.state),
            config=item.config,
            dataset_uri=item.dataset_uri,
            created_at=item.created_at,
            parent_run_id=item.parent_run_id,
            awaiting=item.awaiting,
            model_source=item.model_source,
            package_arn=item.package_arn,
            metrics=item.metrics or {},
            waiting_for_data=tuple(str(a) for a in item.waiting_for_data or ()),
            stage=item.stage or "",
            history=tuple(
                HistoryEntry(
                    event_id=h.event_id,
                    event_kind=h.event_kind,
                    from_state=RunState(h.from_state),
                    to_state=RunState(h.to_state),
                    reason=h.reason or "",
                    time=h.time,
                    commands=tuple(str(c) for c in h.commands or ()),
                    awaits=h.awaits,
                    key=h.key,
                    actor=h.actor,
                )
                for h in (item.history or [])
            ),
        )
        return StoredRun(
            run=run,
            version=int(item.version or 0),
            outbox=tuple(OutboxItem.from_dict(d) for d in (item.outbox or [])),
            outbox_event_id=item.outbox_event_id,
            outbox_since=item.outbox_since,
            updated_at=item.updated_at,
            swept_at=item.swept_at,
        )
