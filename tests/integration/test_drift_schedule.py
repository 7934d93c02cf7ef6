"""The scheduled drift check: one job per deployed run per window, and its request."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.domain import names
from chalicelib.domain.commands import Command, StartProcessingJob
from chalicelib.domain.events import (
    EndpointChanged,
    EvaluationLoaded,
    ModelPackageChanged,
    ProcessingJobChanged,
    TrainingJobChanged,
)
from chalicelib.domain.run import Run
from chalicelib.domain.states import RunState
from chalicelib.executors import Executors, Outcome
from chalicelib.sagemaker import SageMakerExecutors, drift_request
from tests.conftest import BEATS_BASELINE, DEMO_CONFIG, STAGE, T0

pytestmark = pytest.mark.integration
DATASET = "s3://tuneloop-test/datasets/demo/ds-1/reviews.jsonl"


def deployed(service: Any, project: str = "demo", dataset: str = DATASET) -> str:
    return to_deployed(service, service.start_run(project, dataset)[0].run.run_id, project)


def to_deployed(service: Any, run_id: str, project: str) -> str:
    """The run through prepare, train, evaluate, register and deploy, by its events."""
    ok = "Completed"

    def job(run_id: str, step: str) -> str:
        return names.job_name(run_id, step, stage=STAGE)

    for event in (
        ProcessingJobChanged(event_id="1", time=T0, run_id=run_id, job_name=job(run_id, "prepare"), status=ok),
        TrainingJobChanged(event_id="2", time=T0, run_id=run_id, job_name=job(run_id, "train"), status=ok),
        ProcessingJobChanged(event_id="3", time=T0, run_id=run_id, job_name=job(run_id, "evaluate"), status=ok),
        EvaluationLoaded(event_id="4", time=T0, run_id=run_id, metrics={"macro_f1": 0.9}, baseline=BEATS_BASELINE),
        ModelPackageChanged(event_id="5", time=T0, run_id=run_id, package_arn="arn:p", approval_status="Approved"),
        EndpointChanged(event_id="6", time=T0, run_id=run_id, endpoint_name=names.endpoint_name(project, stage=STAGE),
                        status="IN_SERVICE"),
    ):  # fmt: skip
        service.apply(run_id, event)
    assert service.runs.get(run_id).run.state is RunState.DEPLOYED
    return run_id


def test_one_drift_job_per_run_per_window(service: Any) -> None:
    service.create_project("demo", {**DEMO_CONFIG, "drift": {"schedule_minutes": 60}})
    run_id = deployed(service)
    service.start_run("demo", DATASET)  # a run still preparing: not checked
    asked: list[Command] = []

    def record(command: Command, run: Run) -> Outcome:
        asked.append(command)
        return Outcome(done=True, note="recorded")

    service.executors = Executors({StartProcessingJob: record})
    service.clock = lambda: T0 + timedelta(minutes=5)
    assert service.check_drift() == {"started": 1, "failed": 0}
    service.clock = lambda: T0 + timedelta(minutes=50)
    service.check_drift()
    service.clock = lambda: T0 + timedelta(minutes=65)
    service.check_drift()
    service.check_drift(force=True)
    jobs = [c.job_name for c in asked if isinstance(c, StartProcessingJob)]
    window = int((T0 + timedelta(minutes=5)).timestamp() // 3600)
    assert jobs[0] == jobs[1] == names.job_name(run_id, "drift", window, stage=STAGE)  # the same window: one job name
    assert jobs[2] == names.job_name(run_id, "drift", window + 1, stage=STAGE)
    assert jobs[3] not in jobs[:3]  # forced: a check of its own
    assert all(c.step == "drift" and c.input_uri == f"s3://tuneloop-test/capture/demo/{run_id}/" for c in asked)


def test_drift_request_is_valid(settings: Any) -> None:
    configured = dataclasses.replace(
        settings, role_arn="arn:aws:iam::123456789012:role/r", inference_image="inference:cpu",
        code_uri="s3://tuneloop-test/code/v1",
    )  # fmt: skip
    from chalicelib.domain.project import normalise_config

    run = Run("aaaaaaaaaaaa", "demo", RunState.DEPLOYED, normalise_config(DEMO_CONFIG), DATASET, T0,
              model_source="tl-aaaaaaaaaaaa-train-1")  # fmt: skip
    command = StartProcessingJob("aaaaaaaaaaaa", "demo", "tl-aaaaaaaaaaaa-drift-491", step="drift",
                                 input_uri="s3://tuneloop-test/capture/demo/aaaaaaaaaaaa/")  # fmt: skip
    request = drift_request(command, run, configured)
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:aws:sagemaker:us-east-1:1:processing-job/x"},
                      request)  # fmt: skip
    with stub:
        assert SageMakerExecutors(client, configured).start_processing_job(command, run).done
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert inputs["capture"]["S3Uri"] == "s3://tuneloop-test/capture/demo/aaaaaaaaaaaa/"
    assert inputs["model"]["S3Uri"].endswith("/train/tl-aaaaaaaaaaaa-train-1/output/model.tar.gz")
    args = request["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--window-minutes") + 1] == str(run.config["drift"]["schedule_minutes"])
    assert args[args.index("--endpoint") + 1] == "tl-demo"
    assert args[args.index("--run-id") + 1] == "aaaaaaaaaaaa"  # the metrics' run dimension
    assert "labels" not in inputs  # no feedback yet: an empty prefix would fail the job
    # Once labels have arrived, the job reads them (and the project's quality floors).
    s3 = boto3.client("s3")
    if not any(b["Name"] == "tuneloop-test" for b in s3.list_buckets()["Buckets"]):
        s3.create_bucket(Bucket="tuneloop-test")
    executors = SageMakerExecutors(client, configured, s3=s3)
    # Nothing captured under the run's prefix yet: no job (SageMaker refuses an empty input).
    skipped = executors.start_processing_job(command, run)
    assert skipped.done and skipped.note.startswith("nothing captured yet under s3://tuneloop-test/capture/demo/")
    captured = "capture/demo/aaaaaaaaaaaa/tl-demo/AllTraffic/2026/12/06/10/c.jsonl"
    s3.put_object(Bucket="tuneloop-test", Key=captured, Body=b"{}\n")
    s3.put_object(Bucket="tuneloop-test", Key="labels/demo/d1.jsonl", Body=b"{}\n")
    labelled = drift_request(command, run, configured, labels=True)
    stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:aws:sagemaker:us-east-1:1:processing-job/x"},
                      labelled)  # fmt: skip
    with stub:
        assert executors.start_processing_job(command, run).done
    stub.assert_no_pending_responses()
    inputs = {i["InputName"]: i["S3Input"] for i in labelled["ProcessingInputs"]}
    assert inputs["labels"]["S3Uri"] == "s3://tuneloop-test/labels/demo/"
    args = labelled["AppSpecification"]["ContainerArguments"]
    assert json.loads(args[args.index("--quality-thresholds") + 1]) == run.config["quality"]["thresholds"]
    s3.delete_object(Bucket="tuneloop-test", Key="labels/demo/d1.jsonl")
    s3.delete_object(Bucket="tuneloop-test", Key=captured)


def test_drift_checks_by_hand_are_limited_per_hour(service: Any) -> None:
    """A forced check on every request would start a processing job each time: the
    stage's limit shares the hour in slots, one forced check per slot."""
    from chalicelib.domain.limits import Limits

    service.limits = Limits(stage="dev", max_drift_checks_per_hour=4)
    service.create_project("demo", DEMO_CONFIG)
    deployed(service)
    created: set[str] = set()

    def create(command: Command, run: Run) -> Outcome:  # as SageMaker answers a repeated name
        if command.job_name in created:
            return Outcome(done=True, note="already created (a repeat of this command)")
        created.add(command.job_name)
        return Outcome(done=True, note="created")

    service.executors = Executors({StartProcessingJob: create})
    service.clock = lambda: T0 + timedelta(minutes=1)
    assert service.check_drift(force=True) == {"started": 1, "failed": 0}
    service.clock = lambda: T0 + timedelta(minutes=14)
    again = service.check_drift(force=True)
    assert again["started"] == 0 and again["repeated"] == 1
    assert again["next_at"] == (T0 + timedelta(minutes=15)).isoformat()
    service.clock = lambda: T0 + timedelta(minutes=15)
    assert service.check_drift(force=True)["started"] == 1
    assert len(created) == 2
