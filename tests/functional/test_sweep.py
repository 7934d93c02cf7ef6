"""The reconciler's sweeper against DynamoDB Local: lost events applied after the grace
period, runs past their time limit failed, bounded work per tick, no run starved."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from chalicelib.domain import names
from chalicelib.domain.commands import Command, StopJob
from chalicelib.domain.events import DomainEvent, ProcessingJobChanged
from chalicelib.domain.run import Run
from chalicelib.domain.states import RunState
from chalicelib.executors import Outcome
from chalicelib.service import RunService
from tests.conftest import DEMO_CONFIG, T0

S = RunState
GRACE_S = 300


class Jobs:
    """SageMaker's side of the executors: every command is accepted, stops are recorded."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def accept(command: Command, run: Run) -> Outcome:
            if isinstance(command, StopJob):
                self.stopped.append(command.job_name)
            return Outcome(done=True, note=f"{name} accepted")

        return accept


class Probe:
    """What SageMaker would say of each run's resource; None while it runs."""

    def __init__(self) -> None:
        self.answers: dict[str, DomainEvent | Exception | None] = {}
        self.asked: list[str] = []

    def observe(self, run: Run, now: datetime) -> DomainEvent | None:
        self.asked.append(run.run_id)
        answer = self.answers.get(run.run_id)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(deps: Any) -> tuple[RunService, Probe, Jobs, Clock]:
    base = deps.service
    probe, jobs, clock = Probe(), Jobs(), Clock()
    service = RunService(
        base.projects, base.runs, bucket=base.bucket, sagemaker=jobs, clock=clock, probe=probe,  # type: ignore[arg-type]
        sweep_grace_s=GRACE_S, sweep_batch=2,
    )  # fmt: skip
    service.create_project("demo", DEMO_CONFIG)
    return service, probe, jobs, clock


def preparing_run(service: RunService, name: str) -> str:
    stored, _ = service.start_run("demo", f"s3://{service.bucket}/datasets/demo/{name}/data.jsonl")
    assert stored.run.state is S.PREPARING and not stored.pending  # the prepare job was started
    return stored.run.run_id


def prepared(run_id: str, event_id: str, at: datetime) -> ProcessingJobChanged:
    job = names.job_name(run_id, "prepare")
    return ProcessingJobChanged(event_id=event_id, time=at, run_id=run_id, job_name=job, status="Completed")


def test_a_lost_event_is_applied_after_the_grace_period(world: Any) -> None:
    service, probe, _, clock = world
    run_id = preparing_run(service, "lost")
    probe.answers[run_id] = prepared(run_id, f"sweep-{names.job_name(run_id, 'prepare')}:completed", clock.now)
    clock.now += timedelta(seconds=GRACE_S - 1)
    assert service.reconcile()["swept"] == 0  # within the grace period the event may still come
    clock.now += timedelta(seconds=2)
    assert service.reconcile()["moved"] == 1
    run = service.runs.get(run_id).run
    assert run.state is S.TRAINING
    assert run.history[-1].event_id.startswith("sweep-") and run.history[-1].from_state is S.PREPARING
    # The real event, late, under its own EventBridge id: a duplicate, nothing changes.
    late = service.handle(prepared(run_id, "5e1c2b9a-real-eventbridge-id", clock.now))
    assert late.decision is not None and late.decision.noop == "duplicate"
    assert service.runs.get(run_id).run == run


def test_a_run_past_its_time_limit_fails_and_its_job_is_stopped(world: Any) -> None:
    service, _, jobs, clock = world
    run_id = preparing_run(service, "forever")
    clock.now += timedelta(hours=2)  # PROCESSING_MAX_RUNTIME_S + SLACK_S
    assert service.reconcile()["timed_out"] == 0
    clock.now += timedelta(seconds=1)
    assert service.reconcile()["timed_out"] == 1
    run = service.runs.get(run_id).run
    assert run.state is S.FAILED
    job = names.job_name(run_id, "prepare")
    assert run.history[-1].reason == f"timed out: waited 2h00m preparing on {job}; the limit is 2h00m"
    assert jobs.stopped == [job]


def test_what_sagemaker_says_wins_over_the_time_limit(world: Any) -> None:
    service, probe, _, clock = world
    run_id = preparing_run(service, "late-but-done")
    clock.now += timedelta(hours=3)
    probe.answers[run_id] = prepared(run_id, "sweep-done", clock.now)
    assert service.reconcile()["moved"] == 1
    assert service.runs.get(run_id).run.state is S.TRAINING


def test_each_tick_is_bounded_and_no_run_is_starved(world: Any) -> None:
    service, probe, _, clock = world
    runs = [preparing_run(service, f"r{n}") for n in range(5)]
    probe.answers[runs[0]] = RuntimeError("SageMaker throttled this one")
    seen: set[str] = set()
    for _ in range(3):  # 5 runs, 2 per tick: every run is asked within 3 ticks
        clock.now += timedelta(seconds=GRACE_S + 1)
        before = len(probe.asked)
        counts = service.reconcile()
        assert counts["swept"] == 2 and len(probe.asked) - before == 2
        seen.update(probe.asked[before:])
    assert seen == set(runs)
    assert all(service.runs.get(r).run.state is S.PREPARING for r in runs)


def test_a_run_waiting_on_its_own_outbox_is_not_probed(world: Any, deps: Any) -> None:
    service, probe, _, clock = world
    unconfigured = RunService(service.projects, service.runs, bucket=service.bucket, clock=clock, probe=probe,
                              sweep_grace_s=GRACE_S)  # fmt: skip
    stored, _ = unconfigured.start_run("demo", f"s3://{service.bucket}/datasets/demo/pending/data.jsonl")
    assert stored.pending  # SageMaker is not configured: the prepare job waits in the outbox
    clock.now += timedelta(hours=5)
    unconfigured.reconcile()
    assert probe.asked == [] and service.runs.get(stored.run.run_id).run.state is S.PREPARING
