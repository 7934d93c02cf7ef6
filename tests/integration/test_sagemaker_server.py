"""The local SageMaker server: botocore-checked requests, real jobs, AWS-shaped events."""

from __future__ import annotations

import http.client
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
from tests.conftest import BUCKET, DEMO_CONFIG, wait_for
from tuneloop.local import sagemaker as sagemaker_server
from tuneloop.local.sagemaker import jobs
from tuneloop.local.sagemaker.jobs import ProcessingJob

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RUN_ID = "sssssssssss2"
# tuneloop's own entry points, and the test objective some jobs here run.
ENTRY_POINTS = sagemaker_server.ENTRY_POINTS | {"objective.py"}
OBJECTIVE = Path(__file__).parent / "objective"


@pytest.fixture(scope="module")
def server(
    local_services: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, list[dict[str, Any]], Settings]]:
    s3 = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(REPO / "examples" / "data" / "reviews.jsonl"), BUCKET, "datasets/demo/sm/reviews.jsonl")
    events: list[dict[str, Any]] = []
    http = sagemaker_server.serve(tmp_path_factory.mktemp("sagemaker"), s3, events.append, entry_points=ENTRY_POINTS)
    client = boto3.client("sagemaker", endpoint_url=f"http://127.0.0.1:{http.port}")
    settings = Settings(
        stage="test", region="us-east-1", bucket=BUCKET, projects_table="p", runs_table="r",
        role_arn="arn:aws:iam::123456789012:role/tuneloop-test-sagemaker-execution",
        training_image="local/training", processing_image="local/processing",
        code_uri=http.backend.stage_code(REPO / "training", BUCKET),
    )  # fmt: skip
    http.backend.stage_code(OBJECTIVE, BUCKET)
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
    ensure_prepared(client, settings)  # on a warm pool the script reads its data within 3 s
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


def ensure_prepared(client: Any, settings: Settings) -> None:
    """The run's prepared splits, made by a prepare job unless an earlier test made them."""
    if boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{RUN_ID}/prepare/train/").get("KeyCount"):
        return
    run = run_for()
    job = names.job_name(RUN_ID, "prepare", 2)
    client.create_processing_job(
        **prepare_request(StartProcessingJob(RUN_ID, "demo", job, "prepare", run.dataset_uri), run, settings)
    )
    done = wait_done(lambda: client.describe_processing_job(ProcessingJobName=job), "ProcessingJobStatus")
    assert done["ProcessingJobStatus"] == "Completed", done.get("FailureReason")


def test_a_restart_resumes_training_from_its_checkpoint(server: Any, tmp_path: Path) -> None:
    """`tuneloop down` (or any stop of the server) mid-training, then up: the job resumes as
    the same job from the checkpoint its SIGTERM wrote, and ends with its events."""
    client, _, settings = server
    ensure_prepared(client, settings)
    s3 = boto3.client("s3")
    backend = sagemaker_server.LocalSageMaker(tmp_path, s3, lambda event: None)
    backend.stage_code(REPO / "training", BUCKET)
    # No timed checkpoint: what the job resumes from is what its SIGTERM saved.
    run = run_for(hyperparameters={"max_steps": 40, "batch_size": 4, "log_every": 1, "checkpoint_interval_s": 3600})
    request = training_request(
        StartTrainingJob(RUN_ID, "demo", names.job_name(RUN_ID, "train", 9), attempt=9), run, settings
    )
    name = request["TrainingJobName"]
    backend.call("CreateTrainingJob", request)
    job = backend.jobs[("training", name)]
    wait_for(lambda: "[metric]" in (job.log_path.read_text() if job.log_path.exists() else ""), 120)
    backend.close()
    assert job.process is not None and job.process.poll() is not None  # no orphan left training
    # What the stopped job checkpointed went up to its checkpoint location. (Its "checkpoint
    # saved" line may not reach the log: the toolkit that relays the script's output exits
    # on the same SIGTERM.)
    prefix = request["CheckpointConfig"]["S3Uri"].removeprefix(f"s3://{BUCKET}/")
    uploaded = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    assert any(o["Key"].endswith("/state.pt") for o in uploaded), uploaded
    events: list[dict[str, Any]] = []
    restarted = sagemaker_server.LocalSageMaker(tmp_path, s3, events.append)
    done = wait_done(lambda: restarted.describe("training", name), "TrainingJobStatus")
    assert (done["TrainingJobStatus"], done["SecondaryStatus"]) == ("Completed", "Completed"), done.get("FailureReason")
    assert "Restarting" in [t["Status"] for t in done["SecondaryStatusTransitions"]]
    assert "resuming from" in job.log_path.read_text()
    assert {m["MetricName"]: m["Value"] for m in done["FinalMetricDataList"]}["step"] == 40
    # Its state-change event follows its record.
    wait_for(lambda: any(parse_event(e).kind == "training_job.completed" for e in events))
    assert all(parse_event(e).run_id == RUN_ID for e in events)
    # An ended job gives its instance back: its folder keeps the record and the log, not
    # the inputs, the code, the checkpoints or the model (those are in S3).
    left = {p.name for p in (tmp_path / "training" / name).iterdir()}
    assert "job.log" in left and left <= jobs.RECORD_FILES, left
    restarted.close()


def test_a_dead_servers_job_process_is_reclaimed_and_the_job_run_again(server: Any, tmp_path: Path) -> None:
    """A server killed with its jobs running: the next server ends the orphaned process (by
    its recorded PID and start time) and runs the job again."""
    from tuneloop.local.processes import ProcessRecord

    _, _, settings = server
    s3 = boto3.client("s3")
    dead = sagemaker_server.LocalSageMaker(tmp_path, s3, lambda event: None, entry_points=ENTRY_POINTS)
    dead.stage_code(REPO / "training", BUCKET)
    run = run_for()
    request = prepare_request(
        StartProcessingJob(RUN_ID, "demo", names.job_name(RUN_ID, "prepare", 7), "prepare", run.dataset_uri),
        run,
        settings,
    )
    # A long job: objective.py's epochs, as the job's code.
    code = dead.stage_code(OBJECTIVE, BUCKET)
    request["ProcessingInputs"][0]["S3Input"]["S3Uri"] = f"{code}/source/"
    request["AppSpecification"] = {
        "ImageUri": "local/processing",
        "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/objective.py"],
        "ContainerArguments": ["--knob", "0.3", "--epoch-seconds", "600"],
    }
    name = request["ProcessingJobName"]
    dead.call("CreateProcessingJob", request)
    job = dead.jobs[("processing", name)]
    wait_for(lambda: job.process is not None, 120)
    orphan = ProcessRecord.load(job.folder / "process.json")
    assert orphan is not None and orphan.running()
    dead.closing = True  # from here on the old server does nothing, as if SIGKILLed
    events: list[dict[str, Any]] = []
    restarted = sagemaker_server.LocalSageMaker(tmp_path, s3, events.append, entry_points=ENTRY_POINTS)
    assert not orphan.running()
    resumed = restarted.jobs[("processing", name)]
    wait_for(lambda: resumed.process is not None, 120)
    assert resumed.process.pid != orphan.pid
    restarted.call("StopProcessingJob", {"ProcessingJobName": name})
    stopped = wait_done(lambda: restarted.describe("processing", name), "ProcessingJobStatus")
    assert stopped["ProcessingJobStatus"] == "Stopped"
    # The state change's event follows the status, as EventBridge's follows AWS's describe.
    wait_for(lambda: events and parse_event(events[-1]).kind == "processing_job.stopped", 30, what="the stopped event")
    restarted.close()


def test_a_torn_job_record_does_not_keep_the_server_from_starting(tmp_path: Path) -> None:
    folder = tmp_path / "training" / "tl-torn-train-1"
    folder.mkdir(parents=True)
    (folder / "describe.json").write_bytes(b"")  # what a SIGKILL mid-write left before writes were atomic
    backend = sagemaker_server.LocalSageMaker(tmp_path, None, lambda event: None)
    assert ("training", "tl-torn-train-1") not in backend.records
    assert (folder / "describe.json.corrupt").exists()
    backend.close()


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


def objective_tuning_request(settings: Settings, name: str, **config: Any) -> dict[str, Any]:
    """A tuning job over objective.py: one continuous hyperparameter with a known optimum."""
    code = sagemaker_server.upload_code(boto3.client("s3"), OBJECTIVE, BUCKET)  # staged by the fixture
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation_macro_f1"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 8, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {"ContinuousParameterRanges": [{"Name": "knob", "MinValue": "0", "MaxValue": "1"}]},
            "TrainingJobEarlyStoppingType": "Auto",
            "RandomSeed": 7,
            **config,
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {
                "epochs": "5",
                "sagemaker_program": '"objective.py"',
                "sagemaker_submit_directory": f'"{code}/sourcedir.tar.gz"',
            },
            "AlgorithmSpecification": {
                "TrainingImage": "local/training",
                "TrainingInputMode": "File",
                "MetricDefinitions": [
                    {"Name": "validation_macro_f1", "Regex": r"\[metric\].* validation_macro_f1=([-+0-9.eE]+)"}
                ],
            },
            "RoleArn": settings.role_arn,
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/tuning-tests/"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 300},
        },
        "Tags": [{"Key": "tuneloop:run-id", "Value": RUN_ID}],
    }


def test_local_tuning_searches_stops_bad_trials_and_respects_the_parallel_limit(server: Any) -> None:
    client, events, settings = server
    name = "tl-sssssssssss2-tune-1"
    client.create_hyper_parameter_tuning_job(**objective_tuning_request(settings, name))
    with pytest.raises(ClientError, match="ResourceInUse"):
        client.create_hyper_parameter_tuning_job(**objective_tuning_request(settings, name))
    tuning = wait_done(
        lambda: client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
        "HyperParameterTuningJobStatus",
    )
    assert tuning["HyperParameterTuningJobStatus"] == "Completed", tuning.get("FailureReason")
    counters = tuning["TrainingJobStatusCounters"]
    assert counters["Completed"] + counters["Stopped"] == 8 and counters["NonRetryableError"] == 0
    trials = client.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, SortBy="FinalObjectiveMetricValue", MaxResults=100
    )["TrainingJobSummaries"]
    assert len(trials) == 8 and all(t["TrainingJobName"].startswith(f"{name}-") for t in trials)
    best = tuning["BestTrainingJob"]
    assert trials[0]["TrainingJobName"] == best["TrainingJobName"]
    completed = sorted(
        t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        for t in trials
        if t["TrainingJobStatus"] == "Completed"
    )
    best_value = best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
    assert best_value == completed[-1] >= completed[len(completed) // 2]
    # The median rule stopped at least one trial, and only ones worse than the best.
    stopped = [t for t in trials if t["TrainingJobStatus"] == "Stopped"]
    assert stopped, [(t["TunedHyperParameters"], t.get("FinalHyperParameterTuningJobObjectiveMetric")) for t in trials]
    for trial in stopped:
        quality = 1 - 4 * (float(trial["TunedHyperParameters"]["knob"]) - 0.3) ** 2
        assert quality < best_value
        described = client.describe_training_job(TrainingJobName=trial["TrainingJobName"])
        assert "early-stopping rule" in described["SecondaryStatusTransitions"][-1]["StatusMessage"]
    # Never more than MaxParallelTrainingJobs at once.
    edges = sorted(
        [(t["TrainingStartTime"], 1) for t in trials] + [(t["TrainingEndTime"], -1) for t in trials],
        key=lambda e: (e[0], e[1]),
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak <= 2
    # Trials carry the tuning job; their events and the tuning job's are AWS-shaped.
    trial = client.describe_training_job(TrainingJobName=best["TrainingJobName"])
    assert trial["TuningJobArn"] == tuning["HyperParameterTuningJobArn"]
    assert trial["HyperParameters"]["_tuning_objective_metric"] == "validation_macro_f1"
    tuning_events = [
        parse_event(e) for e in events if e["detail-type"] == "SageMaker HyperParameter Tuning Job State Change"
    ]
    final = [e for e in tuning_events if e.job_name == name and e.kind == "tuning_job.completed"]
    assert len(final) == 1 and final[0].best_training_job == best["TrainingJobName"] and final[0].run_id == RUN_ID
    trial_events = [
        parse_event(e)
        for e in events
        if e["detail-type"] == "SageMaker Training Job State Change"
        and e["detail"]["TrainingJobName"].startswith(f"{name}-")
    ]
    assert trial_events and all(e.tuning_job_name == name for e in trial_events)


def test_a_restart_resumes_a_tuning_job_with_its_trials(server: Any, tmp_path: Path) -> None:
    """Down mid-search, then up: finished trials count, running ones resume and rejoin the
    search, and the job runs exactly MaxNumberOfTrainingJobs trials in all."""
    _, _, settings = server
    s3 = boto3.client("s3")
    name = "tl-sssssssssss2-tune-7"
    request = objective_tuning_request(settings, name)
    request["HyperParameterTuningJobConfig"]["ResourceLimits"] = {
        "MaxNumberOfTrainingJobs": 4,
        "MaxParallelTrainingJobs": 2,
    }
    request["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = "Off"
    request["TrainingJobDefinition"]["StaticHyperParameters"]["epoch-seconds"] = "0.8"
    first = sagemaker_server.LocalSageMaker(tmp_path, s3, lambda event: None, entry_points=ENTRY_POINTS)
    first.stage_code(OBJECTIVE, BUCKET)  # the second server trusts it too: it is kept in its home
    first.call("CreateHyperParameterTuningJob", request)
    wait_for(lambda: first.describe("tuning", name)["TrainingJobStatusCounters"]["Completed"] >= 1, 120)
    first.close()
    before = first.tuning_trials(name)
    assert any(t["TrainingJobStatus"] == "InProgress" for t in before)  # stopped mid-search
    events: list[dict[str, Any]] = []
    second = sagemaker_server.LocalSageMaker(tmp_path, s3, events.append, entry_points=ENTRY_POINTS)
    done = wait_done(lambda: second.describe("tuning", name), "HyperParameterTuningJobStatus")
    assert done["HyperParameterTuningJobStatus"] == "Completed", done.get("FailureReason")
    trials = second.tuning_trials(name)
    assert len(trials) == 4 and len({t["TrainingJobName"] for t in trials}) == 4
    assert done["TrainingJobStatusCounters"]["Completed"] == 4
    for trial in before:  # the trials of the first server are the same trials, finished
        assert trial["TrainingJobName"] in {t["TrainingJobName"] for t in trials}
    best = done["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
    assert best == max(t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in trials)

    # Its state-change event follows its record.
    def completed() -> list[Any]:
        tuning = [parse_event(e) for e in events if e["detail-type"].startswith("SageMaker HyperParameter")]
        return [e for e in tuning if e.kind == "tuning_job.completed"]

    final = wait_for(completed)
    assert final[0].best_training_job == done["BestTrainingJob"]["TrainingJobName"]
    second.close()


def test_tuning_with_no_successful_trial_fails_and_stop_stops(server: Any) -> None:
    client, _, settings = server
    broken = objective_tuning_request(settings, "tl-sssssssssss2-tune-2")
    broken["HyperParameterTuningJobConfig"]["ResourceLimits"] = {
        "MaxNumberOfTrainingJobs": 2,
        "MaxParallelTrainingJobs": 2,
    }
    broken["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] = "not-a-number"
    client.create_hyper_parameter_tuning_job(**broken)
    failed = wait_done(
        lambda: client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="tl-sssssssssss2-tune-2"),
        "HyperParameterTuningJobStatus",
    )
    assert failed["HyperParameterTuningJobStatus"] == "Failed"
    assert failed["FailureReason"].startswith("No training job succeeded: 2 failed")
    assert "BestTrainingJob" not in failed
    slow = objective_tuning_request(settings, "tl-sssssssssss2-tune-3")
    slow["TrainingJobDefinition"]["StaticHyperParameters"]["epoch-seconds"] = "30"
    client.create_hyper_parameter_tuning_job(**slow)
    client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName="tl-sssssssssss2-tune-3")
    stopped = wait_done(
        lambda: client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="tl-sssssssssss2-tune-3"),
        "HyperParameterTuningJobStatus",
        timeout=120,
    )
    assert stopped["HyperParameterTuningJobStatus"] == "Stopped"
    with pytest.raises(ClientError, match="ResourceNotFound"):
        client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="tl-sssssssssss2-tune-9")


def test_a_stop_before_the_process_exists_still_stops_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    backend = sagemaker_server.LocalSageMaker(tmp_path, None, lambda event: None)
    job = ProcessingJob(backend, {"ProcessingJobName": "tl-early-stop"})
    job.stop()  # the stop arrives while the job is still downloading its inputs
    began = time.monotonic()
    job.launched(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True))
    assert job.process is not None and job.process.wait(10) is not None
    assert time.monotonic() - began < 10
    backend.close()


def test_only_the_local_clouds_callers_reach_it_and_only_tuneloops_programs_run(server: Any) -> None:
    """Creating a processing job runs a program as the user who started the local cloud:
    an unsigned or wrongly signed request, or a foreign Host, is refused before anything
    is created; a signed request may only name tuneloop's own entry points."""
    from tests.integration.test_local_auth import outsider

    client, _, settings = server
    url = client.meta.endpoint_url
    run = run_for()
    request = prepare_request(
        StartProcessingJob(RUN_ID, "demo", names.job_name(RUN_ID, "prepare", 40), "prepare", run.dataset_uri),
        run,
        settings,
    )
    request["AppSpecification"]["ContainerEntrypoint"] = ["bash", "-c", "touch /tmp/owned"]
    for how in ("unsigned", "another key", "wrong secret"):
        with pytest.raises(ClientError) as info:
            outsider("sagemaker", url, how).create_processing_job(**request)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, how
        with pytest.raises(ClientError) as info:
            outsider("sagemaker-runtime", url, how).invoke_endpoint(EndpointName="any", Body=b"{}")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, how
    with pytest.raises(ClientError) as info:
        client.describe_processing_job(ProcessingJobName=request["ProcessingJobName"])
    assert info.value.response["Error"]["Code"] == "ValidationException"  # AWS's "not found"
    connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
    connection.request(
        "POST", "/", body=b"{}", headers={"Host": "evil.example", "X-Amz-Target": "SageMaker.ListModels"}
    )
    assert connection.getresponse().status == 403

    # Signed, but not tuneloop's program: refused as AWS refuses a bad request.
    for entrypoint in (["bash", "-c", "touch /tmp/owned"], ["python3", "/tmp/x.py"], ["python3", "-c", "0"]):
        request["AppSpecification"]["ContainerEntrypoint"] = entrypoint
        with pytest.raises(ClientError) as info:
            client.create_processing_job(**request)
        assert info.value.response["Error"]["Code"] == "ValidationException"
        assert "runs only" in info.value.response["Error"]["Message"]
    train = training_request(StartTrainingJob(RUN_ID, "demo", names.job_name(RUN_ID, "train", 40), attempt=40), run,
                             settings)  # fmt: skip
    train["HyperParameters"]["sagemaker_program"] = '"evil.py"'
    with pytest.raises(ClientError) as info:
        client.create_training_job(**train)
    assert "runs only" in info.value.response["Error"]["Message"]


def test_the_server_answers_only_requests_signed_for_sagemaker(server: Any) -> None:
    """A request signed for another service (with its larger body bound, DynamoDB's 16 MiB)
    is refused before a byte of its body is read; SageMaker's own is bounded at 6 MiB."""
    from tests.integration.test_local_auth import answer_without_body, signed_request

    client, _, _ = server
    port = int(client.meta.endpoint_url.rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}/"
    for service, declared, status, said in (("dynamodb", 15 << 20, 403, b"signed for dynamodb"),
                                            ("sagemaker", 7 << 20, 413, b"a sagemaker request body over")):  # fmt: skip
        prepared = signed_request(service, "POST", url, b"{}", {"X-Amz-Target": "SageMaker.ListModels"})
        answered, body = answer_without_body(port, prepared, declared)
        assert answered == status and said in body, (service, answered, body[:200])


def refused(create: Any, request: dict[str, Any]) -> str:
    """The ValidationException message a create call is refused with."""
    with pytest.raises(ClientError) as info:
        create(**request)
    assert info.value.response["Error"]["Code"] == "ValidationException", info.value.response
    return str(info.value.response["Error"]["Message"])


def test_jobs_run_only_the_code_tuneloop_staged_with_no_environment_that_changes_what_runs(server: Any) -> None:
    """The entry point's name is not enough: its code must be the code tuneloop staged
    (the location, and the bytes, pinned by SHA-256); no environment variable may change how
    Python, the loader or pip behave; and a processing job reads and writes only under
    /opt/ml/processing/, as on AWS."""
    import copy

    client, _, settings = server
    run = run_for()
    prepare = prepare_request(
        StartProcessingJob(RUN_ID, "demo", names.job_name(RUN_ID, "prepare", 60), "prepare", run.dataset_uri),
        run,
        settings,
    )
    s3 = boto3.client("s3")
    # Another copy of prepare.py, uploaded by whoever can write to the bucket.
    s3.put_object(Bucket=BUCKET, Key="code/theirs/source/prepare.py", Body=b"import os; os.system('id')\n")
    theirs = copy.deepcopy(prepare)
    theirs["ProcessingInputs"][0]["S3Input"]["S3Uri"] = f"s3://{BUCKET}/code/theirs/source/"
    assert "runs only code tuneloop staged" in refused(client.create_processing_job, theirs)
    twice = copy.deepcopy(prepare)
    extra = copy.deepcopy(prepare["ProcessingInputs"][0])
    extra["InputName"], extra["S3Input"]["LocalPath"] = "more", "/opt/ml/processing/input/code/lib"
    twice["ProcessingInputs"].append(extra)
    assert "only the code input" in refused(client.create_processing_job, twice)
    for path in ("/opt/ml/processing/input/../../../../tmp/escaped", "/tmp/escaped", "/opt/ml/processing/./x"):
        outside = copy.deepcopy(prepare)
        outside["ProcessingInputs"][1]["S3Input"]["LocalPath"] = path
        assert "must be a path under /opt/ml/processing/" in refused(client.create_processing_job, outside)
        outside = copy.deepcopy(prepare)
        outside["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["LocalPath"] = path
        assert "must be a path under /opt/ml/processing/" in refused(client.create_processing_job, outside)
    for name, value in (("LD_PRELOAD", "/tmp/x.so"), ("PYTHONPATH", "/tmp"), ("PIP_INDEX_URL", "http://x"),
                        ("PATH", "/tmp"), ("AWS_ENDPOINT_URL_S3", "http://x"), ("OPENSSL_CONF", "/tmp/x.cnf"),
                        ("XDG_CONFIG_HOME", "/tmp"), ("PET_RDZV_BACKEND", "c10d"), ("HF_HUB_OFFLINE", "0"),
                        ("https_proxy", "http://x")):  # fmt: skip
        loaded = {**copy.deepcopy(prepare), "Environment": {name: value}}
        assert f"Environment.{name}: the local SageMaker lets a job set only" in refused(
            client.create_processing_job, loaded
        )
    train = training_request(StartTrainingJob(RUN_ID, "demo", names.job_name(RUN_ID, "train", 60), attempt=60), run,
                             settings)  # fmt: skip
    for submit in ('"/tmp/their-code"', f'"s3://{BUCKET}/code/theirs/sourcedir.tar.gz"'):
        elsewhere = copy.deepcopy(train)
        elsewhere["HyperParameters"]["sagemaker_submit_directory"] = submit
        assert "runs only code tuneloop staged" in refused(client.create_training_job, elsewhere)
    preloaded = {**train, "Environment": {"LD_PRELOAD": "x"}}
    assert "Environment.LD_PRELOAD" in refused(client.create_training_job, preloaded)
    # A channel named ".." would download into the job's folder itself (its /opt/ml/code).
    climbing = copy.deepcopy(train)
    climbing["InputDataConfig"][0]["ChannelName"] = ".."
    assert "InputDataConfig.1.ChannelName '..'" in refused(client.create_training_job, climbing)
    # A tuning range may not choose what each trial runs.
    tuned = objective_tuning_request(settings, "tl-sssssssssss2-tune-60")
    tuned["HyperParameterTuningJobConfig"]["ParameterRanges"]["CategoricalParameterRanges"] = [
        {"Name": "sagemaker_submit_directory", "Values": ['"/tmp/their-code"']}
    ]
    assert "a tuning range may not set the toolkit's own hyperparameters" in refused(
        client.create_hyper_parameter_tuning_job, tuned
    )

    # The staged code replaced after it was staged, or a byte-compiled module planted beside
    # it (Python would load it in place of its source): the job fails, and says why.
    source = settings.code_uri.removeprefix(f"s3://{BUCKET}/") + "/source/"
    original = s3.get_object(Bucket=BUCKET, Key=source + "prepare.py")["Body"].read()
    for n, (key, body) in enumerate([(source + "prepare.py", original + b"\nimport os; os.system('id')\n"),
                                     (source + "__pycache__/spec.cpython-311.pyc", b"planted")]):  # fmt: skip
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        job = names.job_name(RUN_ID, "prepare", 70 + n)
        try:
            client.create_processing_job(**{**prepare, "ProcessingJobName": job})
            done = wait_done(lambda job=job: client.describe_processing_job(ProcessingJobName=job),
                             "ProcessingJobStatus")  # fmt: skip
        finally:
            if key.endswith("prepare.py"):
                s3.put_object(Bucket=BUCKET, Key=key, Body=original)
            else:
                s3.delete_object(Bucket=BUCKET, Key=key)
        assert done["ProcessingJobStatus"] == "Failed", key
        assert "is not the code tuneloop staged there" in done["FailureReason"]


def test_a_job_gets_the_execution_roles_view_of_the_environment_only(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's processes see neither the API's bearer token nor the local cloud's own
    settings and endpoints: only the credentials and the endpoints of what the execution
    role reaches (S3, CloudWatch)."""
    _, _, settings = server
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "the-apis-token")
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    s3 = boto3.client("s3")
    backend = sagemaker_server.LocalSageMaker(tmp_path, s3, lambda event: None, entry_points=ENTRY_POINTS)
    code = backend.stage_code(OBJECTIVE, BUCKET)
    run = run_for()
    request = prepare_request(
        StartProcessingJob(RUN_ID, "demo", names.job_name(RUN_ID, "prepare", 61), "prepare", run.dataset_uri),
        run,
        settings,
    )
    request["ProcessingInputs"][0]["S3Input"]["S3Uri"] = f"{code}/source/"
    request["AppSpecification"] = {
        "ImageUri": "local/processing",
        "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/objective.py"],
        "ContainerArguments": ["--knob", "0.3", "--epoch-seconds", "600"],
    }
    backend.call("CreateProcessingJob", request)
    job = backend.jobs[("processing", request["ProcessingJobName"])]
    try:
        wait_for(lambda: job.process is not None, 120)
        assert job.process is not None
        raw = Path(f"/proc/{job.process.pid}/environ").read_bytes().split(b"\0")
        environ = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        assert not [name for name in environ if name.startswith("TUNELOOP_")], environ.keys()
        assert {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_CLOUDWATCH", "AWS_ACCESS_KEY_ID"} <= set(environ)
        assert "AWS_ENDPOINT_URL_DYNAMODB" not in environ and "AWS_ENDPOINT_URL_SQS" not in environ
    finally:
        backend.call("StopProcessingJob", {"ProcessingJobName": request["ProcessingJobName"]})
        wait_done(lambda: backend.describe("processing", request["ProcessingJobName"]), "ProcessingJobStatus")
        backend.close()


def test_a_metric_definition_whose_regex_runs_away_is_dropped_not_run_for_ever(tmp_path: Path) -> None:
    """MetricDefinitions come with the request: (a|aa)+$ over a log line of a's backtracks
    for hours. It runs with a time bound, is dropped for the job (its log says so), and the
    job's other metrics are still scraped."""
    import threading

    from tuneloop.local.sagemaker.jobs import SCRAPE_TIMEOUT_S, TrainingJob

    backend = sagemaker_server.LocalSageMaker(tmp_path, None, lambda event: None)
    definitions = [{"Name": "runaway", "Regex": r"(a|aa)+$"}, {"Name": "loss", "Regex": r"loss=([0-9.]+)"}]
    job = TrainingJob(backend, {"TrainingJobName": "tl-scrape-1",
                                "AlgorithmSpecification": {"MetricDefinitions": definitions}})  # fmt: skip
    job.log_path.parent.mkdir(parents=True)
    job.log_path.write_text("[metric] loss=0.25\n" + "a" * 60 + "!\n")
    scraper = threading.Thread(target=lambda: (job._scrape_once(), job._scrape_once()), daemon=True)
    scraper.start()
    scraper.join(30)  # unbounded, (a|aa)+$ on 60 a's would take longer than any test runs
    assert not scraper.is_alive(), "the scrape did not end"
    assert job.metrics["loss"]["Value"] == 0.25 and "runaway" not in job.metrics
    said = f"MetricDefinitions 'runaway': its Regex took over {SCRAPE_TIMEOUT_S:g} s; not scraped"
    assert job.log_path.read_text().count(said) == 1  # dropped after the first scrape
    backend.close()
