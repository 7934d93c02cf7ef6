"""The sweeper's probe: Describe* answers (checked against botocore's model by Stubber,
requests and responses alike) read as the events the lost state changes would have carried."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.domain import names
from chalicelib.domain.commands import LoadEvaluation
from chalicelib.domain.events import (
    EndpointChanged,
    EndpointDeploymentChanged,
    EvaluationLoaded,
    ModelPackageChanged,
    TrainingJobChanged,
    TuningJobChanged,
)
from chalicelib.domain.run import Run
from chalicelib.domain.states import RunState
from chalicelib.executors import Outcome
from chalicelib.sweeper import ResourceProbe
from tests.conftest import BEATS_BASELINE, T0
from tests.unit.test_machine import RUN_ID, make_run

S = RunState
NOW = T0 + timedelta(hours=2)
ARN = "arn:aws:sagemaker:us-east-1:123456789012"
OTHER_RUN = "bbbbbbbbbbbb"


@pytest.fixture
def stub() -> Iterator[Stubber]:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    with Stubber(client) as stubber:
        yield stubber
    stubber.assert_no_pending_responses()


def probe(stub: Stubber, evaluation: Any = None) -> ResourceProbe:
    return ResourceProbe(stub.client, evaluation)


def training(status: str, secondary: str, **extra: Any) -> dict[str, Any]:
    job = names.job_name(RUN_ID, "train", 1)
    return {
        "TrainingJobName": job,
        "TrainingJobArn": f"{ARN}:training-job/{job}",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://b/runs/{RUN_ID}/train/{job}/output/model.tar.gz"},
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": T0,
        **extra,
    }


def endpoint(status: str, config_run: str, **extra: Any) -> dict[str, Any]:
    return {
        "EndpointName": "tl-demo",
        "EndpointArn": f"{ARN}:endpoint/tl-demo",
        "EndpointConfigName": f"tl-{config_run}-config-1",
        "EndpointStatus": status,
        "CreationTime": T0,
        "LastModifiedTime": NOW,
        **extra,
    }


def package(version: int, run_id: str, status: str = "PendingManualApproval") -> dict[str, Any]:
    return {
        "ModelPackageName": "tl-demo",
        "ModelPackageGroupName": "tl-demo",
        "ModelPackageVersion": version,
        "ModelPackageArn": f"{ARN}:model-package/tl-demo/{version}",
        "CreationTime": T0,
        "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": []},
        "ModelApprovalStatus": status,
        "CustomerMetadataProperties": {"tuneloop:run-id": run_id},
    }


def test_a_finished_training_job_is_read_as_its_event(stub: Stubber) -> None:
    run = make_run(S.TRAINING)
    metrics = [{"MetricName": "validation_macro_f1", "Value": 0.9, "Timestamp": T0}]
    stub.add_response(
        "describe_training_job",
        training("Completed", "Completed", FinalMetricDataList=metrics, BillableTimeInSeconds=40),
        {"TrainingJobName": run.awaiting},
    )
    event = probe(stub).observe(run, NOW)
    assert isinstance(event, TrainingJobChanged)
    assert (event.kind, event.run_id, event.time) == ("training_job.completed", RUN_ID, NOW)
    assert event.event_id == f"sweep-{run.awaiting}:completed"
    assert event.final_metrics == {"validation_macro_f1": 0.9}


def test_jobs_still_running_say_nothing(stub: Stubber) -> None:
    run = make_run(S.TRAINING)
    stub.add_response("describe_training_job", training("InProgress", "Training"), {"TrainingJobName": run.awaiting})
    assert probe(stub).observe(run, NOW) is None


def test_a_spot_interruption_is_read_with_its_cause(stub: Stubber) -> None:
    run = make_run(S.TRAINING)
    stub.add_response("describe_training_job", training("Stopped", "Interrupted"), {"TrainingJobName": run.awaiting})
    event = probe(stub).observe(run, NOW)
    assert event is not None and event.kind == "training_job.interrupted"


def test_a_tuning_job_without_a_best_trial_is_final(stub: Stubber) -> None:
    run = make_run(S.TUNING)
    stub.add_response(
        "describe_hyper_parameter_tuning_job",
        {
            "HyperParameterTuningJobName": run.awaiting,
            "HyperParameterTuningJobArn": f"{ARN}:hyper-parameter-tuning-job/{run.awaiting}",
            "HyperParameterTuningJobConfig": {
                "Strategy": "Bayesian",
                "ResourceLimits": {"MaxParallelTrainingJobs": 1},
            },
            "HyperParameterTuningJobStatus": "Completed",
            "CreationTime": T0,
            "TrainingJobStatusCounters": {"Completed": 0, "NonRetryableError": 3},
            "ObjectiveStatusCounters": {"Failed": 3},
        },
        {"HyperParameterTuningJobName": run.awaiting},
    )
    event = probe(stub).observe(run, NOW)
    assert isinstance(event, TuningJobChanged) and event.described and event.best_training_job is None


def test_an_endpoint_in_service_on_this_runs_model(stub: Stubber) -> None:
    run = make_run(S.DEPLOYING)
    stub.add_response("describe_endpoint", endpoint("InService", RUN_ID), {"EndpointName": "tl-demo"})
    event = probe(stub).observe(run, NOW)
    assert isinstance(event, EndpointChanged) and event.kind == "endpoint.in_service"
    assert event.event_id == f"sweep-tl-demo:tl-{RUN_ID}-config-1:in_service"


def test_an_endpoint_back_on_the_old_model_was_rolled_back(stub: Stubber) -> None:
    run = make_run(S.DEPLOYING)
    answer = endpoint("InService", OTHER_RUN, FailureReason="alarm tl-x went into ALARM")
    stub.add_response("describe_endpoint", answer, {"EndpointName": "tl-demo"})
    event = probe(stub).observe(run, NOW)
    assert isinstance(event, EndpointDeploymentChanged) and event.kind == "endpoint_deployment.rolled_back"
    assert f"tl-{OTHER_RUN}-config-1" in event.message and "alarm tl-x" in event.message


def test_an_endpoint_still_updating_or_unknown_says_nothing(stub: Stubber) -> None:
    run = make_run(S.DEPLOYING)
    stub.add_response("describe_endpoint", endpoint("Updating", OTHER_RUN), {"EndpointName": "tl-demo"})
    stub.add_client_error(
        "describe_endpoint",
        "ValidationException",
        'Could not find endpoint "tl-demo".',
        400,
        {"EndpointName": "tl-demo"},
    )
    assert probe(stub).observe(run, NOW) is None
    assert probe(stub).observe(run, NOW) is None


def test_a_registering_run_finds_its_package(stub: Stubber) -> None:
    run = make_run(S.REGISTERING)
    summaries = [{k: package(v, r)[k] for k in ("ModelPackageArn", "CreationTime", "ModelPackageStatus")}
                 for v, r in ((3, OTHER_RUN), (2, RUN_ID))]  # fmt: skip
    stub.add_response(
        "list_model_packages",
        {"ModelPackageSummaryList": summaries},
        {"ModelPackageGroupName": "tl-demo", "SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": 20},
    )
    for version, owner in ((3, OTHER_RUN), (2, RUN_ID)):
        arn = f"{ARN}:model-package/tl-demo/{version}"
        stub.add_response("describe_model_package", package(version, owner), {"ModelPackageName": arn})
    event = probe(stub).observe(run, NOW)
    assert isinstance(event, ModelPackageChanged) and event.kind == "model_package.pending"
    assert event.package_arn.endswith("/2") and event.run_id == RUN_ID


def test_a_decided_approval_is_read(stub: Stubber) -> None:
    run = dataclasses.replace(make_run(S.PENDING_APPROVAL), package_arn=f"{ARN}:model-package/tl-demo/2")
    stub.add_response("describe_model_package", package(2, RUN_ID, "Approved"), {"ModelPackageName": run.package_arn})
    event = probe(stub).observe(run, NOW)
    assert event is not None and event.kind == "model_package.approved"


def test_a_gating_run_gets_its_evaluation_read_again(stub: Stubber) -> None:
    class Evaluation:
        def load(self, command: LoadEvaluation, run: Run) -> Outcome:
            assert command.job_name == names.job_name(RUN_ID, "evaluate")
            loaded = EvaluationLoaded(event_id=f"evaluation-{command.job_name}", time=NOW, run_id=run.run_id,
                                      metrics={"macro_f1": 0.9}, baseline=BEATS_BASELINE)  # fmt: skip
            return Outcome(done=True, events=(loaded,))

    event = probe(stub, Evaluation()).observe(make_run(S.GATING), NOW)
    assert isinstance(event, EvaluationLoaded) and event.event_id == f"evaluation-{names.job_name(RUN_ID, 'evaluate')}"
