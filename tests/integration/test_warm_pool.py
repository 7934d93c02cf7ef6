"""Managed Warm Pools on the local SageMaker: a job with KeepAlivePeriodInSeconds runs on a
warm instance and leaves it to the next matching job, and the toolkit contract holds
exactly as for a cold start (environment, /opt/ml, arguments, metrics, checkpoints,
SIGTERM on stop)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import BUCKET, wait_for
from tuneloop.local import sagemaker as sagemaker_server

pytestmark = pytest.mark.integration
PROBE = Path(__file__).parent / "probe"
ROLE = "arn:aws:iam::123456789012:role/tuneloop-test-sagemaker-execution"


@pytest.fixture(scope="module")
def server(local_services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, str]]:
    s3 = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    home = tmp_path_factory.mktemp("sagemaker-warm")
    events: list[dict[str, Any]] = []
    http = sagemaker_server.serve(home, s3, events.append, entry_points=sagemaker_server.ENTRY_POINTS | {"probe.py"})
    client = boto3.client("sagemaker", endpoint_url=f"http://127.0.0.1:{http.port}")
    code = http.backend.stage_code(PROBE, BUCKET)
    yield client, home, code
    http.shutdown()
    http.backend.close()  # its warm instances end with it


def request(code: str, name: str, keep_alive: int | None, **hyper: str) -> dict[str, Any]:
    resources: dict[str, Any] = {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}
    if keep_alive is not None:
        resources["KeepAlivePeriodInSeconds"] = keep_alive
    return {
        "TrainingJobName": name,
        "HyperParameters": {
            "epochs": "3",
            **hyper,
            "sagemaker_program": '"probe.py"',
            "sagemaker_submit_directory": f'"{code}/sourcedir.tar.gz"',
        },
        "AlgorithmSpecification": {
            "TrainingImage": "local/training",
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": "validation_macro_f1", "Regex": r"\[metric\].* validation_macro_f1=([-+0-9.eE]+)"}
            ],
        },
        "RoleArn": ROLE,
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/warm-tests/"},
        "ResourceConfig": resources,
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
        "CheckpointConfig": {"S3Uri": f"s3://{BUCKET}/warm-tests/checkpoints/{name}/"},
    }


def run(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    client.create_training_job(**body)
    name = body["TrainingJobName"]
    return dict(
        wait_for(
            lambda: (
                (d := client.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] != "InProgress" and d
            ),
            timeout=240,
            what=f"{name} ended",
        )
    )


def probe_report(home: Path, name: str) -> dict[str, Any]:
    """What the probe saw, with this job's folder and name made generic."""
    log = (home / "training" / name / "job.log").read_text()
    line = next(line for line in log.splitlines() if line.startswith("probe: {"))
    text = line[len("probe: ") :].replace(str(home / "training" / name), "<job>").replace(name, "<name>")
    return dict(json.loads(text))


def checkpoint_keys(name: str) -> set[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"warm-tests/checkpoints/{name}/")
    return {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}


def test_a_warm_instance_keeps_the_cold_contract_and_passes_to_the_next_job(server: Any) -> None:
    client, home, code = server
    cold = run(client, request(code, "warm-cold", None))
    first = run(client, request(code, "warm-first", 30))
    second = run(client, request(code, "warm-second", 30))
    for job in (cold, first, second):
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
        assert metrics == {"validation_macro_f1": pytest.approx(0.53)}
        assert checkpoint_keys(job["TrainingJobName"]) == {"step.txt"}
        assert job["ModelArtifacts"]["S3ModelArtifacts"].endswith("/output/model.tar.gz")

    # The same arguments, SM_* environment, /opt/ml layout, working directory and sys.path.
    seen = {name: probe_report(home, name) for name in ("warm-cold", "warm-first", "warm-second")}
    preloaded = {name: report.pop("torch_already_imported") for name, report in seen.items()}
    for report in seen.values():
        report.pop("torch_threads", None)
    assert seen["warm-first"] == seen["warm-cold"] == seen["warm-second"]
    assert seen["warm-cold"]["argv"] == ["--epochs", "3"] and seen["warm-cold"]["main"] == "__main__"
    assert "SM_HPS" in seen["warm-cold"]["sm"] and seen["warm-cold"]["layout"]
    # A cold start imports torch itself; the warm instance already had it.
    assert preloaded == {"warm-cold": False, "warm-first": True, "warm-second": True}

    # The pool moved from the first job to the second; a cold job has none.
    assert "WarmPoolStatus" not in cold
    pool = client.describe_training_job(TrainingJobName="warm-first")["WarmPoolStatus"]
    assert pool["Status"] == "Reused" and pool["ReusedByJob"] == "warm-second"
    assert pool["ResourceRetainedBillableTimeInSeconds"] >= 0
    assert client.describe_training_job(TrainingJobName="warm-second")["WarmPoolStatus"]["Status"] == "Available"
    messages = [t.get("StatusMessage", "") for t in second["SecondaryStatusTransitions"]]
    assert any("Reusing the warm pool of training job warm-first" in m for m in messages)
    listed = client.list_training_jobs(WarmPoolStatusEquals="Available")["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in listed] == ["warm-second"]

    # A stop reaches the warm process as SIGTERM: it checkpoints, and the checkpoint is kept.
    body = request(code, "warm-stopped", 30, hold="120")
    client.create_training_job(**body)
    wait_for(
        lambda: (
            (home / "training" / "warm-stopped" / "job.log").is_file()
            and "probe: {" in (home / "training" / "warm-stopped" / "job.log").read_text()
        ),
        timeout=120,
        what="the probe started",
    )
    client.stop_training_job(TrainingJobName="warm-stopped")
    stopped = wait_for(
        lambda: (
            (d := client.describe_training_job(TrainingJobName="warm-stopped"))["TrainingJobStatus"] == "Stopped" and d
        ),
        timeout=60,
        what="the stop",
    )
    assert checkpoint_keys("warm-stopped") == {"step.txt", "sigterm.txt"}
    assert stopped["WarmPoolStatus"]["Status"] == "Available"
    previous = client.describe_training_job(TrainingJobName="warm-second")["WarmPoolStatus"]
    assert previous["ReusedByJob"] == "warm-stopped"


def test_an_unused_pool_ends_after_its_keep_alive_period(server: Any) -> None:
    client, _, code = server
    # Another instance type: nothing to reuse, so a new instance, kept for one second.
    body = request(code, "warm-brief", 1)
    body["ResourceConfig"]["InstanceType"] = "ml.c5.xlarge"
    job = run(client, body)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    ended = wait_for(
        lambda: (
            (p := client.describe_training_job(TrainingJobName="warm-brief")["WarmPoolStatus"])["Status"]
            == "Terminated"
            and p
        ),
        timeout=30,
        what="the pool's end",
    )
    assert ended["ResourceRetainedBillableTimeInSeconds"] == 1 and "ReusedByJob" not in ended


def test_a_restarted_server_finds_its_predecessors_pools_gone(server: Any, tmp_path: Path) -> None:
    _, _, code = server
    s3 = boto3.client("s3")
    first = sagemaker_server.LocalSageMaker(tmp_path, s3, lambda event: None, entry_points=frozenset({"probe.py"}))
    first.stage_code(PROBE, BUCKET)
    first.call("CreateTrainingJob", request(code, "warm-restart", 60))
    wait_for(
        lambda: first.describe("training", "warm-restart")["TrainingJobStatus"] == "Completed",
        timeout=240,
        what="the job",
    )
    assert first.describe("training", "warm-restart")["WarmPoolStatus"]["Status"] == "Available"
    first.close()
    again = sagemaker_server.LocalSageMaker(tmp_path, s3, lambda event: None, entry_points=frozenset({"probe.py"}))
    pool = again.describe("training", "warm-restart")["WarmPoolStatus"]
    assert pool["Status"] == "Terminated" and 0 <= pool["ResourceRetainedBillableTimeInSeconds"] <= 60
    again.close()


def test_parallel_trials_split_the_cores_and_share_warm_instances(server: Any) -> None:
    client, home, code = server
    name = "warm-tuning"
    trial = request(code, "unused", 30)
    definition = {k: v for k, v in trial.items() if k not in ("TrainingJobName", "HyperParameters", "CheckpointConfig")}
    definition["StaticHyperParameters"] = {k: v for k, v in trial["HyperParameters"].items() if k != "epochs"}
    definition["ResourceConfig"]["InstanceType"] = "ml.m5.xlarge"  # instances of its own
    client.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name,
        HyperParameterTuningJobConfig={
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation_macro_f1"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {"CategoricalParameterRanges": [{"Name": "epochs", "Values": ["2", "3"]}]},
            "RandomSeed": 3,
        },
        TrainingJobDefinition=definition,
    )
    tuning = wait_for(
        lambda: (
            (d := client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name))[
                "HyperParameterTuningJobStatus"
            ]
            != "InProgress"
            and d
        ),
        timeout=300,
        what="the tuning job",
    )
    assert tuning["HyperParameterTuningJobStatus"] == "Completed", tuning.get("FailureReason")
    trials = client.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)[
        "TrainingJobSummaries"
    ]
    budget = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)  # see tests/conftest.py
    share = str(max(1, budget // 2))
    pools = {}
    for summary in trials:
        report = probe_report(home, summary["TrainingJobName"])
        assert report["omp"] == share and report.get("torch_threads", int(share)) == int(share)
        pools[summary["TrainingJobName"]] = client.describe_training_job(TrainingJobName=summary["TrainingJobName"])[
            "WarmPoolStatus"
        ]
    # Two instances for two trials at a time; the later trials reused them.
    assert sum(p["Status"] == "Reused" for p in pools.values()) == 2
    assert {p["ReusedByJob"] for p in pools.values() if p["Status"] == "Reused"} <= set(pools)


def test_a_two_instance_job_runs_a_process_per_instance_under_torchrun_and_bills_both(server: Any) -> None:
    from chalicelib.cost import job_line
    from chalicelib.pricing import SHIPPED

    client, home, code = server
    body = request(code, "two-instances", 30, sagemaker_torch_distributed_enabled="true")
    body["ResourceConfig"]["InstanceCount"] = 2
    described = run(client, body)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    # The next job of the same shape starts from the kept instances' interpreter: torchrun
    # is still found (it is this environment's, not next to that interpreter).
    again = run(client, {**body, "TrainingJobName": "two-instances-again",
                         "CheckpointConfig": {"S3Uri": f"s3://{BUCKET}/warm-tests/checkpoints/again/"}})  # fmt: skip
    assert again["TrainingJobStatus"] == "Completed", again.get("FailureReason")
    first = client.describe_training_job(TrainingJobName="two-instances")["WarmPoolStatus"]
    assert first["Status"] == "Reused" and first["ReusedByJob"] == "two-instances-again", first
    log = (home / "training" / "two-instances" / "job.log").read_text()
    assert "torchrun --nnodes 1 --nproc_per_node 2" in log
    seen = [json.loads(line[len("probe: ") :]) for line in log.splitlines() if line.startswith("probe: {")]
    assert sorted((r["rank"], r["world"]) for r in seen) == [("0", "2"), ("1", "2")]
    assert {r["omp"] for r in seen} == {str(max(1, (os.cpu_count() or 1) // 2))}  # the host's cores, shared
    line = job_line("training", "two-instances", described, "us-east-1")
    price = SHIPPED.hourly("us-east-1", "training", "ml.m5.large").usd
    assert price is not None and line["instance_count"] == 2
    assert line["usd"] == round(described["BillableTimeInSeconds"] / 3600 * price * 2, 4)
