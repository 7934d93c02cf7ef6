"""How long a run may wait in each state, and when the reconciler starts asking.

Events are delivered at least once, not exactly once, and can be lost (an async Lambda
invoke that failed its retries, a handler bug, a host restarted). The reconciler's sweeper
makes "never stuck" true with two numbers:

- the grace period (``TUNELOOP_SWEEP_GRACE_S``, one setting): how long a run waits on its
  resource (a job, a tuning job, an endpoint, a model package) before the sweeper asks
  SageMaker where that resource is (Describe*), and asks again at every tick after;
- the state's time limit (``time_limit_s``): how long a run may be in the state at all.
  Past it, the run fails with a reason that names the resource and the time waited, and a
  job it started is stopped. None: the state waits for a person (approval) or has nothing
  to finish (deployed).

A run whose outbox still holds commands waits on tuneloop, not on AWS: the reconciler
re-executes those, and neither probes nor times the run out until they have run.

Limits come from the run's own config: a training run may wait as long as its
MaxRuntimeInSeconds (or MaxWaitTimeInSeconds under spot) allows, plus ``SLACK_S``.
"""

from __future__ import annotations

import math
from datetime import datetime

from .run import Run
from .states import RunState

S = RunState

# What AWS itself may add on top of a job's own limits: instance start-up, image download,
# uploads, a late event.
SLACK_S = 3600
# The prepare and drift jobs' MaxRuntimeInSeconds.
PROCESSING_MAX_RUNTIME_S = 3600
# The most an evaluate job may run: its limit follows the test split's size (or the
# project's evaluation.max_runtime_s), within this and the stage's runtime limit.
EVALUATION_MAX_RUNTIME_S = 86400
# Transform jobs have no runtime limit of their own.
TRANSFORM_LIMIT_S = 24 * 3600
# Every state a run can wait in for something outside tuneloop: the sweeper asks about these.
SWEPT_STATES = (
    S.PREPARING,
    S.TRAINING,
    S.TUNING,
    S.EVALUATING,
    S.GATING,
    S.REGISTERING,
    S.PENDING_APPROVAL,
    S.DEPLOYING,
    S.TRANSFORMING,
)


def _trial_limit_s(run: Run) -> int:
    training = run.config["training"]
    return int(training["max_wait_s"] if training["spot"] and training["max_wait_s"] else training["max_runtime_s"])


def time_limit_s(run: Run) -> int | None:
    """How long the run may be in its current state; None: no limit."""
    state = run.state
    if state is S.PREPARING:
        return PROCESSING_MAX_RUNTIME_S + SLACK_S
    if state is S.EVALUATING:
        # The job's own limit is known only once the test split's size is (when it starts):
        # the run waits for the most it may have been given.
        evaluation = run.config.get("evaluation") or {}
        return int(evaluation.get("max_runtime_s") or EVALUATION_MAX_RUNTIME_S) + SLACK_S
    if state is S.TRAINING:
        return _trial_limit_s(run) + SLACK_S
    if state is S.TUNING:
        tuning = run.config["tuning"] or {}
        rounds = math.ceil(int(tuning.get("max_jobs", 1)) / max(1, int(tuning.get("max_parallel_jobs", 1))))
        return rounds * _trial_limit_s(run) + SLACK_S
    if state is S.TRANSFORMING:
        return TRANSFORM_LIMIT_S + SLACK_S
    if state is S.DEPLOYING:
        deployment = run.config["deployment"]
        return 10 * int(deployment.get("wait_s", 0)) + int(deployment.get("baking_s", 0)) + 2 * SLACK_S
    if state in (S.GATING, S.REGISTERING):
        return SLACK_S  # nothing runs long here: reading the evaluation, then a registry event
    return None  # pending approval waits for a person; deployed and terminal runs wait for nothing


def waiting_since(run: Run) -> datetime | None:
    """When the run began its current wait: the decision that moved it into its state or
    gave it the resource it waits on now."""
    for entry in reversed(run.history):
        if entry.to_state is run.state and (entry.from_state is not entry.to_state or entry.awaits):
            return entry.time
    return None


def overdue(run: Run, now: datetime) -> tuple[float, int] | None:
    """(seconds waited, limit) when the run has been in its state past its time limit, else None."""
    limit = time_limit_s(run)
    since = waiting_since(run)
    if limit is None or since is None:
        return None
    waited = (now - since).total_seconds()
    return (waited, limit) if waited > limit else None
