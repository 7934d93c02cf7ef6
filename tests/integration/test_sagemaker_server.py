"""The local SageMaker server: botocore-checked requests, real jobs, AWS-shaped events."""

from __future__ import annotations

import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chalicelib.config import Settings
from chalicelib.domain import names
from chalicelib.domain.commands import StartProcessingJob, StartTrainingJob
from chalicelib.domain.events import ProcessingJobChanged, TrainingJobChanged
from chalicelib.domain.project import normalise_config
from chalicelib.domain.run import Run
from chalicelib.domain.states import RunState
from chalicelib.events import parse_event
from chalicelib.sagemaker import prepare_request, training_request
from tests.conftest import BUCKET, DEMO_CONFIG
from tuneloop.local import sagemaker_server

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RUN_ID = "sssssssssss2"


@pytest.fixture(scope="module")
def server(
    local_services: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, list[dict[str, Any]], Settings]]:
    s3 = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(REPO / "examples" / "data" / "reviews.jsonl"), BUCKET, "datasets/demo/sm/reviews.jsonl")
    events: list[dict[str, Any]] = []
    http = sagemaker_server.serve(tmp_path_factory.mktemp("sagemaker"), s3, events.append)
    client = boto3.client("sagemaker", endpoint_url=f"http://127.0.0.1:{http.port}")
    settings = Settings(
        stage="test", region="us-east-1", bucket=BUCKET, projects_table="p", runs_table="r",
        role_arn="arn:aws:iam::123456789012:role/tuneloop-test-sagemaker-execution",
        training_image="local/training", processing_image="local/processing",
        code_uri=sagemaker_server.upload_code(s3, REPO / "training", BUCKET),
    )  # fmt: skip
    yield client, events, settings
    http.shutdown()


def run_for(**training: Any) -> Run:
    config = normalise_config({**DEMO_CONFIG, "training": {**DEMO_CONFIG["training"], **training}})
    return Run(
        RUN_ID,
        "demo",
        RunState.PREPARING,
        config,
        f"s3://{BUCKET}/datasets/demo/sm/reviews.jsonl",
        datetime.now(UTC),
    )


def wait_done(describe: Any, key: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = describe()
        if job[key] not in ("InProgress", "Stopping"):
            return dict(job)
        time.sleep(0.5)
    raise AssertionError("job did not finish in time")


def test_requests_aws_would_reject_are_rejected(server: Any) -> None:
    client, _, _ = server
    unchecked = boto3.client(
        "sagemaker", endpoint_url=client.meta.endpoint_url, config=Config(parameter_validation=False)
    )
    base = {
        "RoleArn": "arn:aws:iam::123456789012:role/tuneloop-test-sagemaker-execution",
        "AppSpecification": {"ImageUri": "local/processing"},
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 30}
        },
    }
    cases = [
        ({**base, "ProcessingJobName": "not a valid name!"}, "regular expression pattern"),
        ({**base, "ProcessingJobName": "x" * 64}, "length less than or equal to 63"),
        (
            {
                **base,
                "ProcessingJobName": "ok",
                "ProcessingResources": {
                    "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.nope", "VolumeSizeInGB": 30}
                },
            },
            "enum value set",
        ),
        ({k: v for k, v in base.items() if k != "RoleArn"} | {"ProcessingJobName": "ok"}, "RoleArn"),
    ]
    for request, needle in cases:
        with pytest.raises(ClientError) as info:
            unchecked.create_processing_job(**request)
        assert info.value.response["Error"]["Code"] == "ValidationException"
        assert needle in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        client.describe_training_job(TrainingJobName="never-created")
    assert info.value.response["Error"]["Code"] == "ValidationException"


def test_prepare_then_train_for_real(server: Any) -> None:
    client, events, settings = server
    run = run_for(hyperparameters={"max_steps": 6, "batch_size": 8, "log_every": 2})
    prepare = prepare_request(
        StartProcessingJob(RUN_ID, "demo", names.job_name(RUN_ID, "prepare"), "prepare", run.dataset_uri), run, settings
    )
    client.create_processing_job(**prepare)
    with pytest.raises(ClientError) as info:
        client.create_processing_job(**prepare)
    assert info.value.response["Error"]["Code"] == "ResourceInUse"
    done = wait_done(
        lambda: client.describe_processing_job(ProcessingJobName=prepare["ProcessingJobName"]), "ProcessingJobStatus"
    )
    assert done["ProcessingJobStatus"] == "Completed", done.get("FailureReason")
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{RUN_ID}/prepare/")["Contents"]
    assert {o["Key"].split("/")[3] for o in listed} == {"train", "validation", "test", "profile", "report"}

    train = training_request(
        StartTrainingJob(RUN_ID, "demo", names.job_name(RUN_ID, "train", 1), attempt=1), run, settings
    )
    client.create_training_job(**train)
    job = wait_done(lambda: client.describe_training_job(TrainingJobName=train["TrainingJobName"]), "TrainingJobStatus")
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Completed", "Completed"), job.get("FailureReason")
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert metrics["step"] == 6 and "validation_accuracy" in metrics
    bucket, _, key = job["ModelArtifacts"]["S3ModelArtifacts"][5:].partition("/")
    archive = Path("/tmp") / f"{RUN_ID}-model.tar.gz"
    boto3.client("s3").download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        assert {"model.safetensors", "tokenizer.json", "label_map.json", "code"} <= {
            n.split("/")[0] for n in tar.getnames()
        }
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting",
        "Downloading",
        "Training",
        "Uploading",
        "Completed",
    ]

    # Every status change went out as an AWS-shaped event the app's parser takes.
    parsed = [parse_event(e) for e in events]
    processing = [(e.status) for e in parsed if isinstance(e, ProcessingJobChanged)]
    training = [(e.status, e.secondary_status) for e in parsed if isinstance(e, TrainingJobChanged)]
    assert processing[0] == "InProgress" and processing[-1] == "Completed"
    assert training[-1] == ("Completed", "Completed") and ("InProgress", "Training") in training
    final = next(e for e in parsed if isinstance(e, TrainingJobChanged) and e.status == "Completed")
    assert final.run_id == RUN_ID and final.final_metrics["step"] == 6
    assert all(
        set(e) >= {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
        for e in events
    )


def test_stop_and_max_runtime(server: Any) -> None:
    client, _, settings = server
    run = run_for(hyperparameters={"max_steps": 500, "batch_size": 4}, max_runtime_s=3600)
    stop = training_request(
        StartTrainingJob(RUN_ID, "demo", names.job_name(RUN_ID, "train", 7), attempt=7), run, settings
    )
    client.create_training_job(**stop)
    deadline = time.monotonic() + 60
    while client.describe_training_job(TrainingJobName=stop["TrainingJobName"])["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    client.stop_training_job(TrainingJobName=stop["TrainingJobName"])
    stopped = wait_done(
        lambda: client.describe_training_job(TrainingJobName=stop["TrainingJobName"]), "TrainingJobStatus"
    )
    assert (stopped["TrainingJobStatus"], stopped["SecondaryStatus"]) == ("Stopped", "Stopped")

    timed = training_request(
        StartTrainingJob(RUN_ID, "demo", names.job_name(RUN_ID, "train", 8), attempt=8), run, settings
    )
    timed["StoppingCondition"] = {"MaxRuntimeInSeconds": 3}
    client.create_training_job(**timed)
    out = wait_done(lambda: client.describe_training_job(TrainingJobName=timed["TrainingJobName"]), "TrainingJobStatus")
    assert (out["TrainingJobStatus"], out["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")


def test_restart_ends_running_jobs_and_says_so(server: Any, tmp_path: Path) -> None:
    _, _, settings = server
    s3 = boto3.client("s3")
    backend = sagemaker_server.LocalSageMaker(tmp_path, s3, lambda event: None)
    run = run_for(hyperparameters={"max_steps": 500, "batch_size": 4})
    request = training_request(
        StartTrainingJob(RUN_ID, "demo", names.job_name(RUN_ID, "train", 9), attempt=9), run, settings
    )
    backend.call("CreateTrainingJob", request)
    job = backend.jobs[("training", request["TrainingJobName"])]
    deadline = time.monotonic() + 60
    while job.process is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    backend.close()
    assert job.process.poll() is not None  # no orphan left training after `tuneloop down`
    restarted = sagemaker_server.LocalSageMaker(tmp_path, s3, lambda event: None)
    described = restarted.describe("training", request["TrainingJobName"])
    assert described["TrainingJobStatus"] == "Failed"
    assert "stopped during the job" in described["FailureReason"]


def test_model_registry(server: Any) -> None:
    client, events, _ = server
    events.clear()
    client.create_model_package_group(ModelPackageGroupName="tl-registry-test")
    with pytest.raises(ClientError, match="already exists"):
        client.create_model_package_group(ModelPackageGroupName="tl-registry-test")
    spec = {
        "ModelPackageGroupName": "tl-registry-test",
        "InferenceSpecification": {
            "Containers": [{"Image": "local/inference", "ModelDataUrl": f"s3://{BUCKET}/m/model.tar.gz"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "ModelApprovalStatus": "PendingManualApproval",
        "CustomerMetadataProperties": {"tuneloop:run-id": RUN_ID},
    }
    first = client.create_model_package(**spec, ClientToken="token-1")["ModelPackageArn"]
    assert client.create_model_package(**spec, ClientToken="token-1")["ModelPackageArn"] == first  # a repeat
    second = client.create_model_package(**spec, ClientToken="token-2")["ModelPackageArn"]
    assert first.endswith("/1") and second.endswith("/2")
    client.update_model_package(ModelPackageArn=first, ModelApprovalStatus="Approved")
    client.update_model_package(ModelPackageArn=first, ModelApprovalStatus="Approved")  # no change, no event
    assert client.describe_model_package(ModelPackageName=first)["ModelApprovalStatus"] == "Approved"
    assert len(client.list_model_packages(ModelPackageGroupName="tl-registry-test")["ModelPackageSummaryList"]) == 2
    parsed = [parse_event(e) for e in events]
    assert [(e.kind, e.run_id) for e in parsed] == [
        ("model_package.pending", RUN_ID),
        ("model_package.pending", RUN_ID),
        ("model_package.approved", RUN_ID),
    ]
