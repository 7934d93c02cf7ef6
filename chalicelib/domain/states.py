"""Run states and the order they move in."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    RECEIVED = "received"
    PREPARING = "preparing"
    TRAINING = "training"
    TUNING = "tuning"
    EVALUATING = "evaluating"
    GATING = "gating"
    REGISTERING = "registering"
    PENDING_APPROVAL = "pending_approval"
    DEPLOYING = "deploying"
    TRANSFORMING = "transforming"
    DEPLOYED = "deployed"
    # Terminal states: a run in one of these absorbs every later event.
    REGISTERED = "registered"
    COMPLETED = "completed"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def rank(self) -> int:
        """Position in the lifecycle; a run never moves to a lower rank."""
        return _RANK[self]


TERMINAL_STATES = frozenset(
    {
        RunState.REGISTERED,
        RunState.COMPLETED,
        RunState.SUPERSEDED,
        RunState.REJECTED,
        RunState.ROLLED_BACK,
        RunState.FAILED,
        RunState.STOPPED,
    }
)

_RANK = {
    RunState.RECEIVED: 0,
    RunState.PREPARING: 1,
    RunState.TRAINING: 2,
    RunState.TUNING: 2,
    RunState.EVALUATING: 3,
    RunState.GATING: 4,
    RunState.REGISTERING: 5,
    RunState.PENDING_APPROVAL: 6,
    RunState.DEPLOYING: 7,
    RunState.TRANSFORMING: 7,
    RunState.DEPLOYED: 8,
    **{state: 9 for state in TERMINAL_STATES},
}

# On their way: a job runs or is about to (what the stage's active-run limits count).
WORKING_STATES = tuple(
    s for s in RunState if not s.terminal and s not in (RunState.PENDING_APPROVAL, RunState.DEPLOYED)
)
