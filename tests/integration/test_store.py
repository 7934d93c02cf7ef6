"""The run store on DynamoDB Local: conditional commits, races, indexes, the outbox."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest

from chalicelib.domain import names
from chalicelib.domain.events import ProcessingJobChanged, StopRequested, TrainingJobChanged
from chalicelib.domain.project import normalise_config
from chalicelib.domain.states import RunState
from chalicelib.store import ConflictError
from tests.conftest import BEATS_BASELINE, DEMO_CONFIG, STAGE, T0

pytestmark = pytest.mark.integration

DATASET = "s3://tuneloop-test/datasets/demo/ds-1/reviews.jsonl"


@pytest.fixture
def project(service: Any) -> Any:
    return service.create_project("demo", DEMO_CONFIG)


def job_event(cls: type, run_id: str, step: str, status: str, event_id: str, attempt: int = 1) -> Any:
    return cls(
        event_id=event_id,
        time=T0,
        run_id=run_id,
        job_name=names.job_name(run_id, step, attempt, stage=STAGE),
        status=status,
    )


def test_commit_stores_state_history_and_outbox(service: Any, project: Any) -> None:
    stored, created = service.start_run("demo", DATASET)
    assert created
    assert stored.run.state is RunState.PREPARING
    assert [h.to_state for h in stored.run.history] == [RunState.PREPARING]
    # The SageMaker executor is not built yet: the command waits in the outbox.
    assert [type(i.command).__name__ for i in stored.pending] == ["StartProcessingJob"]
    assert "SageMaker is not configured" in stored.pending[0].note
    again = service.runs.get(stored.run.run_id)
    assert again.run == stored.run and again.version == stored.version


def test_stale_version_cannot_commit(service: Any, project: Any) -> None:
    stored, _ = service.start_run("demo", DATASET)
    run_id = stored.run.run_id
    service.apply(run_id, job_event(ProcessingJobChanged, run_id, "prepare", "Completed", "e1"))
    from chalicelib.domain.machine import decide

    decision = decide(stored.run, StopRequested(event_id="stop", time=T0, run_id=run_id))
    with pytest.raises(ConflictError):
        service.runs.commit(stored, decision, T0)
    assert service.runs.get(run_id).run.state is RunState.TRAINING


def test_sixteen_threads_racing_one_winner_per_transition(service: Any, project: Any) -> None:
    """16 threads deliver the same event stream to one run: each transition happens once."""
    stored, _ = service.start_run("demo", DATASET)
    run_id = stored.run.run_id
    stream = [
        job_event(ProcessingJobChanged, run_id, "prepare", "Completed", "e1"),
        job_event(TrainingJobChanged, run_id, "train", "InProgress", "e2"),
        TrainingJobChanged(
            event_id="e3",
            time=T0,
            run_id=run_id,
            job_name=names.job_name(run_id, "train", 1, stage=STAGE),
            status="Stopped",
            secondary_status="Interrupted",
        ),
        job_event(TrainingJobChanged, run_id, "train", "Completed", "e4", attempt=2),
        job_event(ProcessingJobChanged, run_id, "evaluate", "Completed", "e5"),
    ]
    winners: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker() -> None:
        try:
            barrier.wait()
            for event in stream:
                applied = service.apply(run_id, event)
                if applied.decision.changed:
                    with lock:
                        winners.append((event.event_id, applied.decision.run.state.value))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(winners) == [("e1", "training"), ("e3", "training"), ("e4", "evaluating"), ("e5", "gating")]
    final = service.runs.get(run_id)
    assert final.run.state is RunState.GATING
    # Nothing lost: every transition is in the history exactly once, in order.
    assert [h.event_id for h in final.run.history] == ["request-" + run_id, "e1", "e3", "e4", "e5"]
    # The newest decision's command is the one pending; no older outbox overwrote it.
    assert [type(i.command).__name__ for i in final.pending] == ["LoadEvaluation"]


def test_indexes(service: Any, project: Any) -> None:
    service.create_project("other", DEMO_CONFIG)
    times = [T0 + timedelta(minutes=n) for n in range(3)]
    ids = []
    for when in times:
        service.clock = lambda when=when: when
        ids.append(service.start_run("demo", DATASET)[0].run.run_id)
    service.start_run("other", DATASET)
    page = service.runs.page(project="demo", limit=2)
    assert [r.run.run_id for r in page.items] == [ids[2], ids[1]]  # newest first
    rest = service.runs.page(project="demo", limit=2, next_token=page.next_token)
    assert [r.run.run_id for r in rest.items] == [ids[0]]
    assert {r.run.run_id for r in service.runs.page(state=RunState.PREPARING, limit=10).items} >= set(ids)
    service.apply(ids[0], StopRequested(event_id="s", time=T0, run_id=ids[0]))
    stopped = service.runs.page(project="demo", state=RunState.STOPPED).items
    assert [r.run.run_id for r in stopped] == [ids[0]]
    # Find a run from the SageMaker job it waits on.
    assert service.runs.find_awaiting(names.job_name(ids[1], "prepare", stage=STAGE)) == [ids[1]]


def test_event_resolved_through_job_name_index(service: Any, project: Any) -> None:
    stored, _ = service.start_run("demo", DATASET)
    run_id = stored.run.run_id
    event = ProcessingJobChanged(
        event_id="x", time=T0, job_name=names.job_name(run_id, "prepare", stage=STAGE), status="Completed"
    )
    assert event.run_id is None
    assert service.handle(event).decision.run.state is RunState.TRAINING


def test_reconciler_leaves_unbuilt_commands_pending(service: Any, project: Any) -> None:
    stored, _ = service.start_run("demo", DATASET)
    result = service.reconcile()
    assert result == {"checked": 1, "finished": 0, "swept": 0, "moved": 0, "timed_out": 0, "sweep_errors": 0}
    assert service.runs.get(stored.run.run_id).pending  # still pending: no job pretended


def test_outbox_of_a_newer_decision_is_not_overwritten(service: Any, project: Any) -> None:
    stored, _ = service.start_run("demo", DATASET)
    run_id = stored.run.run_id
    service.apply(run_id, job_event(ProcessingJobChanged, run_id, "prepare", "Completed", "e1"))
    newer = service.runs.get(run_id)
    assert [type(i.command).__name__ for i in newer.pending] == ["StartTrainingJob"]
    with pytest.raises(ConflictError):
        service.runs.record_outbox(stored, [])  # the old decision's outbox is gone
    assert [type(i.command).__name__ for i in service.runs.get(run_id).pending] == ["StartTrainingJob"]


def test_each_transition_is_traced(service: Any, project: Any, recording: Any) -> None:
    stored, _ = service.start_run("demo", DATASET)
    run_id = stored.run.run_id
    service.apply(run_id, job_event(ProcessingJobChanged, run_id, "prepare", "Completed", "e1"))
    service.apply(run_id, job_event(ProcessingJobChanged, run_id, "prepare", "Completed", "e1"))  # duplicate: no span
    transitions = [s.annotations for s in recording.subsegments if s.name == "transition"]
    steps = [(a["from_state"], a["to_state"]) for a in transitions]
    assert steps == [("received", "preparing"), ("preparing", "training")]
    assert {a["run_id"] for a in transitions} == {run_id}


def test_unfinished_commands_carry_over_unless_obsolete(service: Any, project: Any) -> None:
    stored, _ = service.start_run("demo", DATASET)
    run_id = stored.run.run_id
    # The prepare job's start is still pending when its completion arrives: it did start
    # after all, so the start is obsolete; the new decision's command takes its place.
    service.apply(run_id, job_event(ProcessingJobChanged, run_id, "prepare", "Completed", "e1"))
    after = service.runs.get(run_id)
    assert [type(i.command).__name__ for i in after.pending] == ["StartTrainingJob"]
    service.apply(run_id, StopRequested(event_id="stop", time=T0, run_id=run_id))
    stopped = service.runs.get(run_id)
    # Stopping drops the obsolete start and keeps the stop of the job it had asked for.
    assert [type(i.command).__name__ for i in stopped.pending] == ["StopJob"]


def test_the_champion_is_the_projects_deployed_run(service: Any, project: Any) -> None:
    from chalicelib.domain.events import EndpointChanged, EvaluationLoaded, ModelPackageChanged

    first = service.start_run("demo", DATASET)[0].run.run_id
    second = service.start_run("demo", DATASET)[0].run.run_id
    assert service.runs.champion("demo", excluding=second) is None  # nothing deployed yet
    for event in (
        job_event(ProcessingJobChanged, first, "prepare", "Completed", "e1"),
        job_event(TrainingJobChanged, first, "train", "Completed", "e2"),
        job_event(ProcessingJobChanged, first, "evaluate", "Completed", "e3"),
        EvaluationLoaded(event_id="e4", time=T0, run_id=first, metrics={"macro_f1": 0.9}, baseline=BEATS_BASELINE),
        ModelPackageChanged(event_id="e5", time=T0, run_id=first, package_arn="arn:pkg/1", approval_status="Approved"),
        EndpointChanged(
            event_id="e6",
            time=T0,
            run_id=first,
            endpoint_name=names.endpoint_name("demo", stage=STAGE),
            status="IN_SERVICE",
        ),
    ):
        assert service.apply(first, event).decision.changed, event
    assert service.runs.get(first).run.state is RunState.DEPLOYED
    champion = service.runs.champion("demo", excluding=second)
    assert champion.run_id == first and champion.model_source == names.job_name(first, "train", 1, stage=STAGE)
    assert service.runs.champion("demo", excluding=first) is None  # a run is never its own champion
    assert service.runs.champion("other", excluding=second) is None


def test_datasets_whose_newest_run_failed_preparing_are_listed_with_the_reason(service: Any, project: Any) -> None:
    """What a retraining run leaves out: only datasets whose own (newest) run failed in
    preparation; a fixed re-upload to the same key that prepared puts it back."""
    bad = "s3://tuneloop-test/datasets/demo/pc/pc.jsonl"
    fixed = "s3://tuneloop-test/datasets/demo/fixed/data.jsonl"
    failing = {uri: service.start_run("demo", uri)[0].run.run_id for uri in (bad, fixed)}
    good = service.start_run("demo", DATASET)[0].run.run_id
    for run_id in failing.values():
        failed = job_event(ProcessingJobChanged, run_id, "prepare", "Failed", f"f-{run_id}")
        failed = type(failed)(**{**vars(failed), "failure_reason": "DatasetError: 60 of 300 rows are invalid"})
        assert service.apply(run_id, failed).decision.run.state is RunState.FAILED
    service.apply(good, job_event(ProcessingJobChanged, good, "prepare", "Completed", "ok"))
    stopped_in_training = service.start_run("demo", "s3://tuneloop-test/datasets/demo/other/x.jsonl")[0].run.run_id
    service.apply(
        stopped_in_training, job_event(ProcessingJobChanged, stopped_in_training, "prepare", "Completed", "p")
    )
    service.apply(stopped_in_training, StopRequested(event_id="s", time=T0, run_id=stopped_in_training))
    later = T0 + timedelta(hours=1)
    retry = service.start_run("demo", fixed, event_time=later)[0].run.run_id  # the same key, fixed
    service.apply(retry, job_event(ProcessingJobChanged, retry, "prepare", "Completed", "r"))
    assert service.runs.failed_datasets("demo") == [
        (bad, f"its run {failing[bad]} failed preparing: prepare job failed: DatasetError: 60 of 300 rows are invalid")
    ]


def test_a_project_stored_by_an_older_tuneloop_starts_runs_with_todays_defaults(service: Any) -> None:
    """Stored configs are not migrated: a run snapshots the project's config normalised
    again, so one saved before split/gates.primary_metric existed gets their defaults, and
    one that a newer rule refuses starts no run, saying how to fix it."""
    from chalicelib.intake import DatasetDrop
    from chalicelib.service import InvalidRequestError

    old = {k: v for k, v in normalise_config(DEMO_CONFIG).items() if k != "split"}
    old["gates"] = {"metrics": {"macro_f1": 0.7}, "min_improvement": 0.0}
    service.projects.create("older", old, T0)
    run = service.start_run("older", DATASET)[0].run
    assert run.config["split"]["test"] == 0.1 and run.config["gates"]["primary_metric"] == "macro_f1"
    service.projects.create("typo", {**old, "training": {**old["training"], "hyperparameters": {"lr_typo": 1}}}, T0)
    with pytest.raises(InvalidRequestError) as info:
        service.start_run("typo", DATASET)
    assert "config.training.hyperparameters.lr_typo" in str(info.value) and "PUT /projects/typo" in str(info.value)
    drop = DatasetDrop("e", T0, "tuneloop-test", "datasets/typo/ds/x.jsonl", "typo", "ds", 10, "dddddddddddd")
    assert "lr_typo" in service.intake(drop).ignored


def test_a_copy_another_writer_overtook_is_read_again_never_written(settings: Any, service: Any, project: Any) -> None:
    """A process decides on its latest copy of a run (no read per event). Another process
    (another Lambda container, the host after a restart) moves the run on meanwhile: a
    decision that changes nothing on the old copy is confirmed on the table, and one that
    would change it fails its conditional commit and is decided again there."""
    from chalicelib import deps as deps_module

    other = deps_module.build(settings).service  # its own repository: its own copies
    stored, _ = service.start_run("demo", DATASET)
    run_id = stored.run.run_id
    assert service.runs.recent(run_id).cached  # what start_run committed
    # The other process applies the prepare job's completion: the run is training.
    other.apply(run_id, job_event(ProcessingJobChanged, run_id, "prepare", "Completed", "e1"))
    # Out of order on this process's copy (still preparing), in order on the table.
    trained = service.apply(run_id, job_event(TrainingJobChanged, run_id, "train", "Completed", "e2"))
    assert trained.decision.changed and trained.decision.run.state is RunState.EVALUATING
    # A transition on an old copy: the other process still holds the run as training.
    again = other.apply(run_id, job_event(TrainingJobChanged, run_id, "train", "Completed", "e2"))
    assert not again.decision.changed and again.decision.noop == "duplicate"
    final = service.runs.get(run_id)
    assert [h.event_id for h in final.run.history] == ["request-" + run_id, "e1", "e2"]
    assert [type(i.command).__name__ for i in final.pending] == ["StartProcessingJob"]


def test_a_run_decided_on_its_own_latest_copy_is_not_read_per_event(service: Any, project: Any) -> None:
    """The bench's "spread" pattern in small: one process, one run, its events in order.
    Each transition costs its two writes, not a read as well; duplicates cost nothing."""
    stored, _ = service.start_run("demo", DATASET)
    run_id = stored.run.run_id
    reads: list[str] = []
    table_get = service.runs.get
    service.runs.get = lambda rid: reads.append(rid) or table_get(rid)
    events = [
        job_event(ProcessingJobChanged, run_id, "prepare", "Completed", "e1"),
        job_event(TrainingJobChanged, run_id, "train", "Completed", "e2"),
        job_event(ProcessingJobChanged, run_id, "evaluate", "Completed", "e3"),
    ]
    for event in events + events:  # every event twice, as EventBridge may deliver it
        service.apply(run_id, event)
    assert reads == []
    service.runs.get = table_get
    assert [h.event_id for h in service.runs.get(run_id).run.history] == ["request-" + run_id, "e1", "e2", "e3"]


def test_a_run_at_every_bound_still_commits(service: Any, project: Any) -> None:
    """The largest run item a sender can cause: the largest config a project may have, the
    most metrics an evaluation may report, a history past its budget with the longest texts.
    DynamoDB refuses an item over 400 KB, which would stop every later transition of the
    run: this one commits, and the next transition after it too."""
    import dataclasses

    from chalicelib.domain.events import RetrainRequested
    from chalicelib.domain.machine import decide
    from chalicelib.domain.project import MAX_CONFIG_BYTES
    from chalicelib.sagemaker import MAX_METRIC_NAME, MAX_METRICS

    stored, _ = service.start_run("demo", DATASET)
    config = {**stored.run.config, "retrain": {**stored.run.config["retrain"], "cooldown_s": 0, "max_per_day": 100}}
    padding = MAX_CONFIG_BYTES - len(str(config).encode())
    config["padding"] = "p" * max(0, padding - 100)
    metrics = {f"{n:04d}".ljust(MAX_METRIC_NAME, "m"): 0.5 for n in range(MAX_METRICS)}
    run = dataclasses.replace(stored.run, state=RunState.DEPLOYED, config=config, metrics={"evaluation": metrics})
    for n in range(600):
        event = RetrainRequested(event_id=f"r{n}", time=T0 + timedelta(hours=n), run_id=run.run_id,
                                 reason="x" * 1000, actor="arn:aws:iam::123456789012:user/" + "u" * 2000)  # fmt: skip
        decision = decide(run, event)
        run = decision.run
    committed = service.runs.commit(service.runs.get(run.run_id), decision, T0)
    item = service.runs._model._get_connection().get_item(run.run_id)["Item"]
    size = len(json.dumps(item).encode())  # more than DynamoDB counts: type tags, quotes
    print(f"\nthe largest run item: under {size / 1024:.0f} KB, {len(committed.run.history)} history entries")
    assert size < 350 * 1024
    later = RetrainRequested(event_id="later", time=T0 + timedelta(days=40), run_id=run.run_id, reason="y" * 1000)
    assert service.apply(run.run_id, later).decision.changed
