"""Job commands reach SageMaker through the outbox (client stubbed by botocore's Stubber)."""

from __future__ import annotations

import dataclasses
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from chalicelib import deps as deps_module
from chalicelib.domain.states import RunState
from tests.conftest import DEMO_CONFIG, STAGE

pytestmark = pytest.mark.integration
DATASET = "s3://tuneloop-test/datasets/demo/ds-1/reviews.jsonl"


@pytest.fixture
def stubbed_service(settings: Any) -> Any:
    configured = dataclasses.replace(
        settings,
        role_arn="arn:aws:iam::123456789012:role/tuneloop-test-sagemaker-execution",
        training_image="training:latest",
        processing_image="processing:latest",
        code_uri="s3://tuneloop-test/code/v1",
    )
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    built = deps_module.build(configured, sagemaker_client=client)
    built.service.create_project("demo", DEMO_CONFIG)
    with stub:
        yield built.service, stub


def test_created_job_clears_the_outbox(stubbed_service: Any) -> None:
    service, stub = stubbed_service
    stub.add_response(
        "create_processing_job",
        {"ProcessingJobArn": "arn:x"},
        {
            "ProcessingJobName": ANY,
            **{
                k: ANY
                for k in (
                    "RoleArn",
                    "AppSpecification",
                    "ProcessingInputs",
                    "ProcessingOutputConfig",
                    "ProcessingResources",
                    "StoppingCondition",
                    "Tags",
                )
            },
        },
    )
    stored, _ = service.start_run("demo", DATASET)
    stub.assert_no_pending_responses()
    again = service.runs.get(stored.run.run_id)
    assert again.run.state is RunState.PREPARING and again.pending == ()
    assert service.reconcile() == {
        "checked": 0,
        "finished": 0,
        "swept": 0,
        "moved": 0,
        "timed_out": 0,
        "sweep_errors": 0,
    }  # nothing left to redo


def test_rejected_request_fails_the_run_with_the_reason(stubbed_service: Any) -> None:
    service, stub = stubbed_service
    stub.add_client_error("create_processing_job", "ValidationException", "1 validation error detected: RoleArn")
    stored, _ = service.start_run("demo", DATASET)
    run = service.runs.get(stored.run.run_id).run
    assert run.state is RunState.FAILED
    assert "ValidationException" in run.history[-1].reason and "RoleArn" in run.history[-1].reason


def test_transient_errors_wait_for_the_reconciler(stubbed_service: Any) -> None:
    service, stub = stubbed_service
    stub.add_client_error("create_processing_job", "ThrottlingException", "Rate exceeded")
    stored, _ = service.start_run("demo", DATASET)
    pending = service.runs.get(stored.run.run_id).pending
    assert len(pending) == 1 and "Rate exceeded" in pending[0].note
    stub.add_client_error("create_processing_job", "ResourceInUse", "exists")  # it did get through after all
    assert service.reconcile() == {
        "checked": 1,
        "finished": 1,
        "swept": 0,
        "moved": 0,
        "timed_out": 0,
        "sweep_errors": 0,
    }


def test_tuning_with_no_successful_trial_fails_the_run_with_the_counts(stubbed_service: Any) -> None:
    from chalicelib.domain import names
    from chalicelib.events import parse_event
    from tests.conftest import load_event

    service, stub = stubbed_service
    tuned = {
        **DEMO_CONFIG,
        "tuning": {
            "objective": {"metric": "validation_macro_f1"},
            "ranges": {"learning_rate": {"type": "continuous", "min": 1e-5, "max": 1e-3}},
            "max_jobs": 3,
        },
    }
    service.create_project("tuned", tuned)
    stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:x"})
    stored, _ = service.start_run("tuned", "s3://tuneloop-test/datasets/tuned/ds-1/reviews.jsonl")
    run_id = stored.run.run_id
    tune = names.job_name(run_id, "tune", stage=STAGE)
    stub.add_response("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": "arn:x"})
    prepared = load_event("processing_job_completed", id="p-done")
    prepared["detail"].update(ProcessingJobName=names.job_name(run_id, "prepare", stage=STAGE), Tags={})
    service.handle(parse_event(prepared))
    assert service.runs.get(run_id).run.state is RunState.TUNING
    stub.add_response(
        "describe_hyper_parameter_tuning_job",
        {
            "HyperParameterTuningJobName": tune,
            "HyperParameterTuningJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{tune}",
            "HyperParameterTuningJobConfig": {
                "Strategy": "Bayesian",
                "ResourceLimits": {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 1},
            },
            "HyperParameterTuningJobStatus": "Completed",
            "CreationTime": stored.run.created_at,
            "TrainingJobStatusCounters": {"Completed": 0, "NonRetryableError": 2, "Stopped": 1},
            "ObjectiveStatusCounters": {"Succeeded": 0, "Pending": 0, "Failed": 3},
        },
        {"HyperParameterTuningJobName": tune},
    )
    done = load_event("tuning_job_completed", id="tune-done")
    done["detail"].update(HyperParameterTuningJobName=tune, Tags={})
    del done["detail"]["BestTrainingJob"]
    service.handle(parse_event(done))
    stub.assert_no_pending_responses()
    run = service.runs.get(run_id).run
    assert run.state is RunState.FAILED
    assert run.history[-1].reason == (
        "tuning finished with no successful training job: trials Completed 0, Failed 2, Stopped 1"
    )
