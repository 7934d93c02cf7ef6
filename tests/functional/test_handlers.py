"""The EventBridge handlers, invoked as Lambda would with full envelopes."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.domain import names
from tests.conftest import BEATS_BASELINE, DEMO_CONFIG, STAGE, load_event
from tests.functional.conftest import Api
from tests.unit.test_event_shapes import json_values, mutated_events


def drop_event(key: str = "datasets/demo/ds-1/reviews.jsonl", event_id: str = "drop-1", **obj: Any) -> dict[str, Any]:
    event = load_event("s3_object_created", id=event_id)
    event["detail"]["object"]["key"] = key
    event["detail"]["object"].update(obj)
    return event


def runs(api: Api) -> list[dict[str, Any]]:
    return api.call("GET", "/runs?limit=100")[1]["runs"]


def test_s3_drop_starts_one_run(api: Api, demo: dict[str, Any]) -> None:
    result = api.invoke("on_dataset_uploaded", drop_event())
    assert result["run_id"] and not result["ignored"]
    run = api.call("GET", f"/runs/{result['run_id']}")[1]
    assert run["state"] == "preparing"
    assert run["dataset_uri"] == "s3://tuneloop-test/datasets/demo/ds-1/reviews.jsonl"
    # The same object delivered again (same or a new event id) starts nothing more.
    again = api.invoke("on_dataset_uploaded", drop_event())
    retried = api.invoke("on_dataset_uploaded", drop_event(event_id="drop-2"))
    assert again["run_id"] == retried["run_id"] == result["run_id"]
    assert "duplicate" in again["ignored"]
    assert len(runs(api)) == 1


def test_encoded_key_is_decoded_once(api: Api, demo: dict[str, Any]) -> None:
    result = api.invoke("on_dataset_uploaded", drop_event("datasets/demo/my+ds/c%2B%2B+%C3%A9t%C3%A9.jsonl"))
    run = api.call("GET", f"/runs/{result['run_id']}")[1]
    assert run["dataset_uri"] == "s3://tuneloop-test/datasets/demo/my ds/c++ été.jsonl"


def test_drops_that_start_nothing(api: Api, demo: dict[str, Any], s3: Any) -> None:
    for key in (
        "other/demo/ds/x.jsonl",
        "datasets/ghost/ds/x.jsonl",
        "datasets/demo/../x/y.jsonl",
        "datasets/demo/ds/part/x.jsonl",
    ):
        result = api.invoke("on_dataset_uploaded", drop_event(key, event_id=key))
        assert result.get("ignored") and not result.get("run_id"), key
    foreign = drop_event()
    foreign["detail"]["bucket"]["name"] = "someone-elses-bucket"
    assert "not tuneloop's bucket" in api.invoke("on_dataset_uploaded", foreign)["ignored"]
    assert runs(api) == []
    # The drop for a project that does not exist is listed where its uploader can see it,
    # once however often its event comes; what is no dataset at all is only logged.
    api.invoke("on_dataset_uploaded", drop_event("datasets/ghost/ds/x.jsonl", event_id="again"))
    [refused] = api.call("GET", "/drops")[1]["refused"]
    assert refused["uri"] == "s3://tuneloop-test/datasets/ghost/ds/x.jsonl"
    assert refused["reason"] == "no project named 'ghost'" and refused["refused_at"].endswith("Z")


def sagemaker(fixture: str, run_id: str, event_id: str, **detail: Any) -> dict[str, Any]:
    event = load_event(fixture, id=event_id)
    event["detail"].update(detail)
    event["detail"]["Tags"] = {}
    return event


def test_sagemaker_events_move_the_run(api: Api, demo: dict[str, Any]) -> None:
    run_id = api.invoke("on_dataset_uploaded", drop_event())["run_id"]
    prepare = names.job_name(run_id, "prepare", stage=STAGE)
    train = names.job_name(run_id, "train", 1, stage=STAGE)
    done = sagemaker("processing_job_completed", run_id, "p-done", ProcessingJobName=prepare)
    assert api.invoke("on_sagemaker_event", done)["state"] == "training"
    # Redelivered (same id) and reordered (an InProgress after Completed): harmless.
    assert api.invoke("on_sagemaker_event", done)["noop"] == "duplicate"
    late = sagemaker(
        "processing_job_completed", run_id, "p-late", ProcessingJobName=prepare, ProcessingJobStatus="InProgress"
    )
    assert api.invoke("on_sagemaker_event", late)["noop"] == "stale"
    trained = sagemaker("training_job_completed", run_id, "t-done", TrainingJobName=train)
    assert api.invoke("on_sagemaker_event", trained)["state"] == "evaluating"
    failed = sagemaker(
        "processing_job_failed", run_id, "e-fail", ProcessingJobName=names.job_name(run_id, "evaluate", stage=STAGE)
    )
    assert api.invoke("on_sagemaker_event", failed)["state"] == "failed"
    run = api.call("GET", f"/runs/{run_id}")[1]
    assert [h["to"] for h in run["history"]] == ["preparing", "training", "evaluating", "failed"]
    assert failed["detail"]["FailureReason"] in run["history"][-1]["reason"]


def test_events_for_no_run_or_unknown_shapes_are_ignored(api: Api, demo: dict[str, Any]) -> None:
    foreign = sagemaker("training_job_completed", "", "f1", TrainingJobName="someone-elses-job")
    assert "no run" in api.invoke("on_sagemaker_event", foreign)["ignored"]
    ghost = sagemaker("training_job_completed", "", "f2", TrainingJobName="tl-zzzzzzzzzzzz-train-1")
    assert "no run" in api.invoke("on_sagemaker_event", ghost)["ignored"]
    broken = load_event("training_job_completed", id="f3")
    del broken["detail"]["TrainingJobStatus"]
    assert "TrainingJobStatus" in api.invoke("on_sagemaker_event", broken)["ignored"]
    odd = load_event("training_job_completed", id="f4", **{"detail-type": "SageMaker Image State Change"})
    assert "no parser" in api.invoke("on_sagemaker_event", odd)["ignored"]


def test_reconciler_keeps_sagemaker_commands_pending(api: Api, demo: dict[str, Any]) -> None:
    run_id = api.invoke("on_dataset_uploaded", drop_event())["run_id"]
    scheduled = api.client.events.generate_cw_event("aws.events", "Scheduled Event", {}, [], region="us-east-1")
    result = api.invoke("reconcile", scheduled)
    assert result == {"checked": 1, "finished": 0, "swept": 0, "moved": 0, "timed_out": 0, "sweep_errors": 0}
    pending = api.call("GET", f"/runs/{run_id}")[1]["pending_commands"]
    assert [p["type"] for p in pending] == ["StartProcessingJob"]


TUNED_CONFIG = {
    **DEMO_CONFIG,
    "tuning": {
        "objective": {"metric": "validation_macro_f1"},
        "ranges": {"learning_rate": {"type": "continuous", "min": 1e-5, "max": 1e-3, "scaling": "Logarithmic"}},
        "max_jobs": 3,
    },
}


def tuning_run(api: Api) -> tuple[str, str]:
    status, body = api.call("POST", "/projects", {"name": "tuned", "config": TUNED_CONFIG})
    assert status == 201, body
    run_id = api.invoke("on_dataset_uploaded", drop_event("datasets/tuned/ds-1/reviews.jsonl"))["run_id"]
    prepared = sagemaker(
        "processing_job_completed", run_id, "p-done", ProcessingJobName=names.job_name(run_id, "prepare", stage=STAGE)
    )
    assert api.invoke("on_sagemaker_event", prepared)["state"] == "tuning"
    return run_id, names.job_name(run_id, "tune", stage=STAGE)


def tuning_event(tune: str, event_id: str, status: str = "Completed", best: str | None = "-002-0a1b2c3d") -> Any:
    event = sagemaker("tuning_job_completed", "", event_id, HyperParameterTuningJobName=tune)
    event["detail"]["HyperParameterTuningJobStatus"] = status
    if best:
        event["detail"]["BestTrainingJob"]["TrainingJobName"] = tune + best
    else:
        del event["detail"]["BestTrainingJob"]
    return event


def test_tuning_completed_with_a_best_job_evaluates_that_job(api: Api) -> None:
    run_id, tune = tuning_run(api)
    # A trial's own events are progress of the tuning job, never a move of the run.
    trial = sagemaker("training_job_completed", run_id, "trial-1", TrainingJobName=f"{tune}-001-0a1b2c3d")
    trial["detail"]["TuningJobArn"] = f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{tune}"
    assert api.invoke("on_sagemaker_event", trial)["noop"] == "progress"
    # Out of order: another run's tuning job, or a tuning event before the run tunes.
    other = tuning_event("tl-bbbbbbbbbbbb-tune-1", "other")
    assert "no run" in api.invoke("on_sagemaker_event", other)["ignored"]
    done = tuning_event(tune, "tune-done")
    assert api.invoke("on_sagemaker_event", done)["state"] == "evaluating"
    assert api.invoke("on_sagemaker_event", done)["noop"] == "duplicate"
    again = tuning_event(tune, "tune-done-2")  # the same news with a new event id
    assert api.invoke("on_sagemaker_event", again)["noop"] == "duplicate"  # that status was applied
    run = api.call("GET", f"/runs/{run_id}")[1]
    assert run["model_source"] == f"{tune}-002-0a1b2c3d"
    assert run["metrics"]["training"] == {"validation_macro_f1": 0.91}  # the best trial's objective
    assert run["pending_commands"][0]["input_uri"] == f"{tune}-002-0a1b2c3d"
    assert "best " + f"{tune}-002-0a1b2c3d" in run["history"][-1]["reason"]
    assert "Completed 4, Failed 1, Stopped 1" in run["history"][-1]["reason"]


def test_tuning_failed_fails_the_run_with_the_reason(api: Api) -> None:
    run_id, tune = tuning_run(api)
    failed = tuning_event(tune, "tune-failed", status="Failed", best=None)
    failed["detail"]["FailureReason"] = "All training jobs failed: AlgorithmError: CUDA out of memory"
    assert api.invoke("on_sagemaker_event", failed)["state"] == "failed"
    late = tuning_event(tune, "tune-late", status="InProgress", best=None)
    assert api.invoke("on_sagemaker_event", late)["noop"] == "terminal"
    run = api.call("GET", f"/runs/{run_id}")[1]
    assert "CUDA out of memory" in run["history"][-1]["reason"]


def test_tuning_completed_without_a_best_job_asks_describe(api: Api) -> None:
    run_id, tune = tuning_run(api)
    done = tuning_event(tune, "tune-done", best=None)
    assert api.invoke("on_sagemaker_event", done)["state"] == "tuning"
    run = api.call("GET", f"/runs/{run_id}")[1]
    # No SageMaker here: both commands wait in the outbox (the integration tests run them).
    assert [p["type"] for p in run["pending_commands"]] == ["StartTuningJob", "DescribeTuningJob"]


def run_to_deploying(api: Api, deps: Any, project: str, config: dict[str, Any]) -> str:
    """A run of a new project ``project`` carried to deploying by its jobs' events."""
    assert api.call("POST", "/projects", {"name": project, "config": config})[0] == 201
    run_id = api.invoke("on_dataset_uploaded", drop_event(f"datasets/{project}/ds-1/reviews.jsonl"))["run_id"]
    run_to_deploying_existing(api, deps, run_id)
    return str(run_id)


def endpoint_event(fixture: str, event_id: str, project: str, config_run: str, **detail: Any) -> dict[str, Any]:
    event = load_event(fixture, id=event_id)
    event["detail"].update(
        EndpointName=names.endpoint_name(project, stage=STAGE),
        EndpointConfigName=names.job_name(config_run, "config", stage=STAGE),
        **detail,
    )
    return event


def test_endpoint_events_deploy_fail_and_roll_back(api: Api, deps: Any) -> None:
    first = run_to_deploying(api, deps, "served", DEMO_CONFIG)
    run = api.call("GET", f"/runs/{first}")[1]
    assert run["state"] == "deploying" and run["awaiting"] == names.endpoint_name("served", stage=STAGE)
    creating = endpoint_event("endpoint_in_service", "creating", "served", first, EndpointStatus="CREATING")
    assert api.invoke("on_sagemaker_event", creating)["noop"] == "progress"
    in_service = endpoint_event("endpoint_in_service", "in-service", "served", first)
    assert api.invoke("on_sagemaker_event", in_service)["state"] == "deployed"
    assert api.invoke("on_sagemaker_event", in_service)["noop"] == "duplicate"
    late = endpoint_event("endpoint_in_service", "late-creating", "served", first, EndpointStatus="CREATING")
    assert api.invoke("on_sagemaker_event", late)["noop"] in ("stale", "out_of_order")
    run = api.call("GET", f"/runs/{first}")[1]
    # The internal SupersedePrevious ran; the AWS commands wait for SageMaker to be configured.
    assert {p["type"] for p in run["pending_commands"]} >= {"ConfigureAutoscaling", "CreateDriftAlarms"}

    # A second model updates the endpoint blue/green and rolls back during baking. The
    # rollback's events name the old run's config; they still concern the run deploying.
    second = api.invoke("on_dataset_uploaded", drop_event("datasets/served/ds-2/reviews.jsonl", event_id="d2"))[
        "run_id"
    ]
    second_run = run_to_deploying_existing(api, deps, second)
    assert second_run["state"] == "deploying"
    baking = endpoint_event(
        "endpoint_deployment_rolled_back", "baking", "served", second, State="BAKING", Message="baking 300s"
    )
    assert api.invoke("on_sagemaker_event", baking)["noop"] == "progress"
    rolled = endpoint_event(
        "endpoint_deployment_rolled_back",
        "rolled",
        "served",
        first,
        Message="Rolled back: alarm tl-x-rollback-invocation5xxerrors in ALARM during baking",
    )
    assert api.invoke("on_sagemaker_event", rolled)["state"] == "rolled_back"
    back_in_service = endpoint_event("endpoint_in_service", "back", "served", first)
    assert api.invoke("on_sagemaker_event", back_in_service)["state"] == "deployed"  # the old run serves on
    run = api.call("GET", f"/runs/{second}")[1]
    assert "rollback-invocation5xxerrors" in run["history"][-1]["reason"]
    assert api.call("GET", f"/runs/{first}")[1]["state"] == "deployed"

    # A third model's endpoint fails: the reason is kept.
    third = api.invoke("on_dataset_uploaded", drop_event("datasets/served/ds-3/reviews.jsonl", event_id="d3"))["run_id"]
    run_to_deploying_existing(api, deps, third)
    failed = endpoint_event(
        "endpoint_failed", "failed", "served", third, FailureReason="The primary container did not pass the ping"
    )
    assert api.invoke("on_sagemaker_event", failed)["state"] == "failed"
    assert "did not pass the ping" in api.call("GET", f"/runs/{third}")[1]["history"][-1]["reason"]


def run_to_deploying_existing(api: Api, deps: Any, run_id: str) -> dict[str, Any]:
    from chalicelib.domain.events import EvaluationLoaded, ModelPackageChanged
    from tests.conftest import T0

    for fixture, key, step in (
        ("processing_job_completed", "ProcessingJobName", "prepare"),
        ("training_job_completed", "TrainingJobName", "train"),
        ("processing_job_completed", "ProcessingJobName", "evaluate"),
    ):
        event = sagemaker(fixture, run_id, f"{run_id}-{step}-done", **{key: names.job_name(run_id, step, stage=STAGE)})
        api.invoke("on_sagemaker_event", event)
    deps.service.handle(
        EvaluationLoaded(
            event_id=f"loaded-{run_id}", time=T0, run_id=run_id, metrics={"macro_f1": 0.9}, baseline=BEATS_BASELINE
        )
    )
    deps.service.handle(
        ModelPackageChanged(
            event_id=f"approved-{run_id}",
            time=T0,
            run_id=run_id,
            package_arn=f"arn:aws:sagemaker:us-east-1:123456789012:model-package/tl-x/{run_id}",
            approval_status="Approved",
        )
    )
    return dict(api.call("GET", f"/runs/{run_id}")[1])


def test_transform_job_events_finish_batch_runs(api: Api, deps: Any) -> None:
    config = {**DEMO_CONFIG, "deployment": {"mode": "batch", "batch_input_uri": "s3://tuneloop-test/batch/batch/in/"}}
    run_id = run_to_deploying(api, deps, "batch", config)
    assert api.call("GET", f"/runs/{run_id}")[1]["state"] == "transforming"
    transform = names.job_name(run_id, "transform", stage=STAGE)
    done = sagemaker("transform_job_completed", run_id, "t-done", TransformJobName=transform)
    assert api.invoke("on_sagemaker_event", done)["state"] == "completed"
    other = run_to_deploying_existing(api, deps, api.invoke(
        "on_dataset_uploaded", drop_event("datasets/batch/ds-2/reviews.jsonl", event_id="b2"))["run_id"])  # fmt: skip
    failed = sagemaker(
        "transform_job_completed",
        other["run_id"],
        "t-failed",
        TransformJobName=names.job_name(other["run_id"], "transform", stage=STAGE),
        TransformJobStatus="Failed",
        FailureReason="ClientError: no input under s3://tuneloop-test/batch/in/",
    )
    assert api.invoke("on_sagemaker_event", failed)["state"] == "failed"


def test_retraining_by_hand_and_by_alarm_one_at_a_time(api: Api, deps: Any) -> None:
    parent = run_to_deploying(api, deps, "loop", {**DEMO_CONFIG, "retrain": {"cooldown_s": 0, "max_per_day": 5}})
    assert api.call("POST", f"/runs/{parent}/retrain", {})[0] == 409  # not deployed yet
    api.invoke("on_sagemaker_event", endpoint_event("endpoint_in_service", "up", "loop", parent))
    status, body = api.call("POST", f"/runs/{parent}/retrain", {"reason": "new data arrived"},
                            headers={"Idempotency-Key": "k1"})  # fmt: skip
    assert status == 202, body
    child = api.call("GET", f"/runs/{body['child_run_id']}")[1]
    assert child["parent_run_id"] == parent and child["state"] == "preparing"
    # The child retrains on the project's current data: every dataset dropped so far.
    assert child["dataset_uri"] == "s3://tuneloop-test/datasets/loop/"
    again = api.call(
        "POST", f"/runs/{parent}/retrain", {"reason": "new data arrived"}, headers={"Idempotency-Key": "k1"}
    )
    assert again == (202, body)  # a retried request: the same child
    status, conflict = api.call("POST", f"/runs/{parent}/retrain", {})
    assert status == 409 and "still active" in conflict["Message"]
    # A drift alarm while the child runs starts nothing, and the parent's history says why.
    alarm = load_event("alarm_drift", id="drift-1")
    alarm["detail"]["alarmName"] = names.drift_alarm_name(parent, "prediction_psi", stage=STAGE)
    assert api.invoke("on_alarm", alarm)["state"] == "deployed"
    history = api.call("GET", f"/runs/{parent}")[1]["history"]
    assert "no retraining" in history[-1]["reason"] and "still active" in history[-1]["reason"]
    assert api.call("POST", "/runs/zzzzzzzzzzzz/retrain", {})[0] == 404
    assert api.call("POST", f"/runs/{parent}/retrain", {"reason": 3})[0] == 400


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(raw=st.one_of(mutated_events(), json_values))
def test_no_event_shape_crashes_a_handler(api: Api, demo: dict[str, Any], raw: Any) -> None:
    """Lambda would retry a crash three times and dead-letter it; any JSON value is instead
    handled or ignored with a reason, by every handler, against the real store."""
    for handler in ("on_dataset_uploaded", "on_sagemaker_event", "on_alarm"):
        result = api.invoke(handler, raw)
        assert isinstance(result, dict), (handler, result)
        if result.get("ignored"):
            assert isinstance(result["ignored"], str) and "\n" not in result["ignored"]


def test_past_the_budget_no_retraining_run_starts_and_the_alarm_waits_for_the_next_month(
    api: Api, deps: Any, s3: Any
) -> None:
    from datetime import timedelta

    from chalicelib.domain.events import LabelsArrived
    from tests.conftest import T0

    clock = deps.service.clock
    deps.service.clock = lambda: clock() - timedelta(hours=1)  # the parent learnt from its data an hour ago
    parent = run_to_deploying(api, deps, "spent", {**DEMO_CONFIG, "retrain": {"cooldown_s": 0, "max_per_day": 5}})
    deps.service.clock = clock
    api.invoke("on_sagemaker_event", endpoint_event("endpoint_in_service", "up", "spent", parent))
    # Since then a new dataset arrived: something to learn from.
    s3.put_object(Bucket="tuneloop-test", Key="datasets/spent/ds-2/reviews.jsonl", Body=b'{"text": "a"}\n')
    figures = "stage test has spent $250.00 of its $200 budget for 2026-12 (list prices of 2026-11)"
    asked: list[str] = []

    def spent() -> str:
        asked.append("budget")
        return figures

    deps.service.budget = spent
    status, body = api.call("POST", f"/runs/{parent}/retrain", {"reason": "new data arrived"})
    assert status == 409 and body["Message"].endswith(figures), body
    # A drift alarm starts none either: the parent, still deployed, records why, and the
    # alarm waits (as for data) so that the scheduled check looks again.
    alarm = load_event("alarm_drift", id="drift-spent")
    alarm_name = names.drift_alarm_name(parent, "prediction_psi", stage=STAGE)
    alarm["detail"]["alarmName"] = alarm_name
    assert api.invoke("on_alarm", alarm)["state"] == "deployed"
    view = api.call("GET", f"/runs/{parent}")[1]
    assert view["state"] == "deployed" and figures in view["history"][-1]["reason"], view["history"][-1]
    assert view["retraining_waits_for_data"] == [alarm_name]
    assert [r["run_id"] for r in api.call("GET", "/runs?project=spent")[1]["runs"]] == [parent]
    # An alarm that asks for nothing does not read the month's spend (Describe calls).
    asked.clear()
    ok = load_event("alarm_drift", id="drift-ok")
    ok["detail"].update(alarmName=names.quality_alarm_name(parent, "accuracy", stage=STAGE))
    ok["detail"]["state"]["value"], ok["detail"]["previousState"]["value"] = "OK", "ALARM"
    api.invoke("on_alarm", ok)
    assert asked == []
    # Next month (the budget allows again) the scheduled look starts the retraining run.
    deps.service.budget = lambda: None
    applied = deps.service.apply(parent, LabelsArrived(event_id="data-check-1", time=T0, run_id=parent,
                                                       scheduled=True))  # fmt: skip
    assert applied.decision is not None and applied.decision.changed
    children = [r for r in api.call("GET", "/runs?project=spent")[1]["runs"] if r["run_id"] != parent]
    assert len(children) == 1 and api.call("GET", f"/runs/{parent}")[1]["retraining_waits_for_data"] == []
    # A child whose start raced a crossing is not started: the parent's command notes why,
    # and the parent keeps serving.
    deps.service.budget = spent
    note = deps.service.start_child_run(parent, "childspent01", "drift")
    assert note == f"no child run: {figures}" and deps.service.runs.get("childspent01") is None
    assert api.call("GET", f"/runs/{parent}")[1]["state"] == "deployed"
