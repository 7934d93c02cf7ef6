"""What GET /runs/{id} adds to a run: its tuning trials and presigned evaluation links."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlparse

import boto3
from botocore.stub import Stubber

from chalicelib.domain import names
from chalicelib.domain.run import HistoryEntry
from chalicelib.domain.states import RunState
from chalicelib.reports import S3_CONFIG, RunReports, tuning_job_of
from chalicelib.sagemaker import SageMakerExecutors
from tests.conftest import T0
from tests.unit.test_sagemaker_requests import RUN_ID, SETTINGS, tuning_run


def clients() -> tuple[object, Stubber, object, Stubber]:
    keys = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    s3, sagemaker = boto3.client("s3", config=S3_CONFIG, **keys), boto3.client("sagemaker", **keys)
    return s3, Stubber(s3), sagemaker, Stubber(sagemaker)


def tuned() -> object:
    tune = names.job_name(RUN_ID, "tune")
    entry = HistoryEntry("p", "processing_job.completed", RunState.PREPARING, RunState.TUNING, "tune", T0,
                         ("StartTuningJob",), tune)  # fmt: skip
    return dataclasses.replace(
        tuning_run(), history=(entry,), metrics={"evaluation": {"macro_f1": 0.9}}, model_source=f"{tune}-001-0a1b2c3d"
    )


def test_links_are_presigned_for_what_the_evaluation_wrote() -> None:
    s3, s3_stub, sagemaker, _ = clients()
    prefix = f"runs/{RUN_ID}/evaluate/evaluation/"
    s3_stub.add_response(
        "list_objects_v2",
        {
            "Contents": [
                {"Key": prefix + n} for n in ("evaluation.json", "report.html", "confusion_matrix.png", "x.txt")
            ]
        },
        {"Bucket": "tuneloop-test", "Prefix": prefix},
    )
    with s3_stub:
        links = RunReports(s3, SageMakerExecutors(sagemaker, SETTINGS), SETTINGS).links(tuned())
    assert set(links) == {"evaluation", "report", "plot:confusion_matrix"}
    report = urlparse(links["report"])
    query = parse_qs(report.query)
    assert report.path.endswith(prefix + "report.html") and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["3600"]
    unevaluated = dataclasses.replace(tuned(), metrics={})
    assert RunReports(s3, SageMakerExecutors(sagemaker, SETTINGS), SETTINGS).links(unevaluated) == {}


def test_trials_are_read_live_and_an_outage_does_not_hide_the_run() -> None:
    s3, _, sagemaker, stub = clients()
    run = tuned()
    assert tuning_job_of(run) == names.job_name(RUN_ID, "tune")
    stub.add_client_error("list_training_jobs_for_hyper_parameter_tuning_job", "ThrottlingException", "Rate exceeded")
    with stub:
        view = RunReports(s3, SageMakerExecutors(sagemaker, SETTINGS), SETTINGS).tuning(run)
    assert view is not None and view["trials"] == [] and "Rate exceeded" in view["trials_error"]
    assert view["best_training_job"] == run.model_source
    assert view["objective"] == {"metric": "validation_macro_f1", "type": "Maximize"}
    untuned = dataclasses.replace(run, history=())
    assert RunReports(s3, SageMakerExecutors(sagemaker, SETTINGS), SETTINGS).tuning(untuned) is None
