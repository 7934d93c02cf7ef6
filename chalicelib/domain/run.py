"""The run as the state machine sees it: a frozen snapshot, no storage concerns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .states import RunState


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded decision: a transition, or a self-loop that issued commands."""

    event_id: str
    event_kind: str
    from_state: RunState
    to_state: RunState
    reason: str
    time: datetime
    commands: tuple[str, ...] = ()
    awaits: str | None = None
    # The event's status key (a resource and the status it reached), when it has one.
    key: str | None = None
    # Who asked, when a request caused this entry (approve, reject, stop, retrain, a run).
    actor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_kind": self.event_kind,
            "from": self.from_state.value,
            "to": self.to_state.value,
            "reason": self.reason,
            "time": self.time.isoformat(timespec="microseconds"),  # one format, whole seconds or not
            "commands": list(self.commands),
            "awaits": self.awaits,
            "key": self.key,
            "actor": self.actor,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            event_id=data["event_id"],
            event_kind=data["event_kind"],
            from_state=RunState(data["from"]),
            to_state=RunState(data["to"]),
            reason=data.get("reason", ""),
            time=datetime.fromisoformat(data["time"]),
            commands=tuple(data.get("commands") or ()),
            awaits=data.get("awaits"),
            key=data.get("key"),
            actor=data.get("actor"),
        )


@dataclass(frozen=True)
class Run:
    run_id: str
    project: str
    state: RunState
    config: Mapping[str, Any]
    dataset_uri: str
    created_at: datetime
    parent_run_id: str | None = None
    # Name of the resource whose events move the run next (a job, an endpoint).
    awaiting: str | None = None
    # Training job whose model the run registers and deploys, once training is done.
    model_source: str | None = None
    # The model package this run registered, once SageMaker reported it.
    package_arn: str | None = None
    history: tuple[HistoryEntry, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    # The drift and quality alarms in ALARM whose retraining run waits for something new
    # to learn from (labels, a dataset); it starts when that arrives.
    waiting_for_data: tuple[str, ...] = ()
    # The stage that made the run: the prefix of every name it makes (see names.prefix).
    stage: str = ""

    def has_seen(self, event_id: str) -> bool:
        return any(entry.event_id == event_id for entry in self.history)

    def applied(self, status_key: str | None) -> HistoryEntry | None:
        """The decision that already applied this resource status, if one did."""
        if status_key is None:
            return None
        return next((entry for entry in self.history if entry.key == status_key), None)

    @property
    def past_resources(self) -> frozenset[str]:
        return frozenset(entry.awaits for entry in self.history if entry.awaits)

    def times_of(self, command_type: str) -> list[datetime]:
        return [entry.time for entry in self.history if command_type in entry.commands]
