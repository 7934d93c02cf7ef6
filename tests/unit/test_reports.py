"""What GET /runs/{id} adds to a run: its tuning trials and presigned evaluation links."""

from __future__ import annotations

import dataclasses
import io
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


def test_the_trial_the_run_took_is_listed_first_even_when_a_stopped_one_scored_higher() -> None:
    """CI caught this on the local cloud: a trial the median rule stopped early can end on a
    value above the final value of the completed trial the tuner chose (its last epochs
    dropped). Sorted by value alone, the listing's first trial was not the run's model."""
    s3, _, sagemaker, stub = clients()
    run = tuned()
    tune = names.job_name(RUN_ID, "tune")

    def summary(n: str, status: str, value: float) -> dict[str, object]:
        return {
            "TrainingJobName": f"{tune}-{n}-0a1b2c3d",
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{tune}-{n}",
            "CreationTime": T0,
            "TrainingJobStatus": status,
            "TunedHyperParameters": {"learning-rate": '"0.0002"'},
            "ObjectiveStatus": "Succeeded",
            "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "validation_macro_f1", "Value": value},
        }

    listed = [summary("002", "Stopped", 0.9), summary("003", "Completed", 0.85), summary("001", "Completed", 0.8)]
    run = dataclasses.replace(run, model_source=f"{tune}-001-0a1b2c3d")
    stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": listed})
    with stub:
        view = RunReports(s3, SageMakerExecutors(sagemaker, SETTINGS), SETTINGS).tuning(run)
    assert view is not None
    assert [t["training_job"][len(tune) + 1 : len(tune) + 4] for t in view["trials"]] == ["001", "002", "003"]
    assert [t["chosen"] for t in view["trials"]] == [True, False, False]


def test_the_evaluation_view_takes_what_pages_draw_and_survives_odd_files() -> None:
    s3, s3_stub, sagemaker, _ = clients()
    reports = RunReports(s3, SageMakerExecutors(sagemaker, SETTINGS), SETTINGS)
    run = tuned()
    written = {
        "metrics": {"accuracy": 0.9, "labels": ["a", "b"], "confusion_matrix": [[4, 1], [0, 5]],
                    "per_class": {"a": {"precision": 1.0, "recall": 0.8, "f1": 0.89, "support": 5}},
                    "calibration": [{"low": 0.9, "high": 1.0, "count": 10, "confidence": 0.95, "accuracy": 0.9}]},
        "intervals": {"accuracy": [0.7, 1.0]},
        "confidence": 0.9,
        "training_history": [{"epoch": 1.0, "step": 10, "validation_loss": 0.3}],
    }  # fmt: skip
    generated = [
        {"prompt": f"p{n}", "expected": "e", "generated": "g", "scores": {"exact_match": 0.0}} for n in range(30)
    ]
    causal = reports.evaluation(run, {"metrics": {}, "generations": [*generated, "junk"], "differences": "junk"})
    assert causal is not None and causal["generations"] == generated[:20] and "differences" not in causal
    view = reports.evaluation(run, written)
    assert view == {
        "labels": ["a", "b"],
        "per_class": written["metrics"]["per_class"],
        "confusion_matrix": [[4, 1], [0, 5]],
        "calibration": written["metrics"]["calibration"],
        "intervals": {"accuracy": [0.7, 1.0]},
        "confidence": 0.9,
        "training_history": written["training_history"],
    }
    # An older evaluation (no history, no calibration) or a damaged one still gives a view.
    assert reports.evaluation(run, {"metrics": [1, 2], "training_history": "x", "intervals": None}) == {
        "intervals": {},
        "confidence": 0.95,
        "training_history": [],
    }
    assert reports.evaluation(run, None) is None
    # The file is read once per view; a run before its evaluation reads nothing.
    assert reports.evaluation_file(dataclasses.replace(run, metrics={})) is None
    key = f"runs/{RUN_ID}/evaluate/evaluation/evaluation.json"
    s3_stub.add_response("get_object", {"Body": io.BytesIO(b"[1]")}, {"Bucket": SETTINGS.bucket, "Key": key})
    with s3_stub:
        assert reports.evaluation_file(run) is None  # not an object: nothing to draw
