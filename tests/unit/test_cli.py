"""The CLI answers bad input with one line and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop import cli


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"not json", "is not JSON: Expecting value at line 1, column 1"),
        (b"[1, 2]", "holds a JSON array; an EventBridge event is a JSON object"),
        (b'"text"', "holds a JSON string"),
        (b'{"source": ["aws.s3"], "detail-type": "Object Created"}', "'source' must be a string"),
        (b"\xff\xfe", "cannot read"),
    ],
)
def test_event_send_refuses_what_is_not_an_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, reason: str
) -> None:
    path = tmp_path / "event.json"
    path.write_bytes(content)
    assert cli.main(["event", "send", str(path)]) == 1
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1 and "Traceback" not in err


def test_event_send_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["event", "send", str(tmp_path / "nowhere.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_watch_shows_a_jobs_epoch_step_loss_and_each_epochs_validation_metrics() -> None:
    import boto3
    from botocore.stub import Stubber

    from tuneloop import client

    sagemaker = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(sagemaker)
    described = {
        "TrainingJobName": "tl-aaaaaaaaaaaa-train-1",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/tl-aaaaaaaaaaaa-train-1",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Training",
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": "2026-11-30T00:00:00Z",
        "FinalMetricDataList": [
            {"MetricName": name, "Value": value, "Timestamp": "2026-11-30T00:01:00Z"}
            for name, value in (("epoch", 1.5), ("step", 60), ("train_loss", 0.4123),
                                ("validation_loss", 0.35), ("validation_macro_f1", 0.81))
        ],
    }  # fmt: skip
    stub.add_response("describe_training_job", described, {"TrainingJobName": "tl-aaaaaaaaaaaa-train-1"})
    with stub:
        progress, validation = client.training_progress(sagemaker, "tl-aaaaaaaaaaaa-train-1")
    assert progress == "Training     epoch 1.50 step 60 loss 0.4123"
    assert validation == ["tl-aaaaaaaaaaaa-train-1 epoch 1 validation: loss 0.3500 macro_f1 0.8100"]


def test_a_run_waiting_for_a_person_says_what_to_do_next(capsys: pytest.CaptureFixture[str]) -> None:
    from tuneloop import client

    run = {"run_id": "aaaaaaaaaaaa", "project": "demo", "state": "pending_approval", "dataset_uri": "s3://b/k",
           "history": [], "pending_commands": [], "links": {},
           "metrics": {"comparison": {"metric": "macro_f1", "challenger": 0.812, "champion": 0.911, "low": -0.14,
                                      "high": -0.06, "confidence": 0.95, "rows": 265, "champion_run_id": "c"}},
           "config": {"training": {"hyperparameters": {"epochs": 1, "learning_rate": 5e-05}}}}  # fmt: skip
    client.show_run(run)
    out = capsys.readouterr().out
    assert "tuneloop run approve aaaaaaaaaaaa (or reject aaaaaaaaaaaa)" in out
    assert "hyperparameters  epochs=1 learning_rate=5e-05" in out
    assert "macro_f1 0.8120 vs 0.9110 (run c) on 265 test rows: -0.0990, 95% interval -0.1400 to -0.0600" in out


def test_stopping_what_serves_needs_a_confirmation(capsys: pytest.CaptureFixture[str]) -> None:
    """No terminal to ask at and no --yes: nothing is sent, and the line says how to confirm."""
    assert cli.main(["run", "stop", "aaaaaaaaaaaa", "--stop-serving"]) == 1
    err = capsys.readouterr().err
    assert err == "tuneloop: stop run aaaaaaaaaaaa and delete the endpoint it serves: pass --yes to confirm " \
                  "(no terminal to ask at)\n"  # fmt: skip
