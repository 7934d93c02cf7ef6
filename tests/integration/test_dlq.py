"""Dead letters listed and delivered again: a deployed stage's SQS queues (moto), found
through the stack's outputs, redriven through Lambda's async invoke (Stubber checks every
request against botocore's model); and the local router's dead-letter file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from tests.conftest import load_event
from tuneloop import cli
from tuneloop.dlq import LocalDeadLetters, StackDeadLetters

pytestmark = pytest.mark.integration
ACCOUNT_ARN = "arn:aws:lambda:us-east-1:123456789012:function"
STACK = "tuneloop-dev"


@pytest.fixture
def queues(local_services: Any) -> Iterator[dict[str, str]]:
    sqs = boto3.client("sqs")
    urls = {
        name: sqs.create_queue(QueueName=f"tuneloop-dev-{name.replace('_', '-')}-dlq")["QueueUrl"]
        for name in ("on_sagemaker_event", "on_alarm")
    }
    yield urls
    for url in urls.values():
        sqs.delete_queue(QueueUrl=url)


def stack(urls: dict[str, str]) -> dict[str, Any]:
    logical = {"on_sagemaker_event": "OnSagemakerEvent", "on_alarm": "OnAlarm"}
    outputs = [{"OutputKey": "DataBucketName", "OutputValue": "tuneloop-dev-bucket"}]
    for name, url in urls.items():
        outputs += [
            {"OutputKey": f"{logical[name]}DeadLetterQueue", "OutputValue": url},
            {"OutputKey": f"{logical[name]}Function", "OutputValue": f"{ACCOUNT_ARN}:{logical[name]}"},
        ]
    return {"Stacks": [{"StackName": STACK, "CreationTime": "2026-11-30T00:00:00Z", "StackStatus": "UPDATE_COMPLETE",
                        "Outputs": outputs}]}  # fmt: skip


def waiting(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def test_a_stages_dead_letters_are_listed_and_redriven(queues: dict[str, str]) -> None:
    sqs = boto3.client("sqs")
    training = load_event("training_job_completed")
    alarm = load_event("alarm_drift")
    # Lambda's async DLQ (the function threw) and EventBridge's (it could not invoke).
    for handler, event, attribute, reason in (
        ("on_sagemaker_event", training, "ErrorMessage", "Task timed out"),
        ("on_alarm", alarm, "ERROR_CODE", "Throttling"),
    ):
        attributes = {attribute: {"DataType": "String", "StringValue": reason}}
        sqs.send_message(QueueUrl=queues[handler], MessageBody=json.dumps(event), MessageAttributes=attributes)
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    lambda_client = boto3.client("lambda", region_name="us-east-1")
    with Stubber(cloudformation) as cfn, Stubber(lambda_client) as invoked:
        for _ in range(3):
            cfn.add_response("describe_stacks", stack(queues), {"StackName": STACK})
        letters = StackDeadLetters(cloudformation, sqs, lambda_client, STACK)
        listed = letters.letters()
        assert [(d.handler, d.event["id"], d.reason) for d in listed] == [
            ("on_alarm", alarm["id"], "Throttling"),
            ("on_sagemaker_event", training["id"], "Task timed out"),
        ]
        assert waiting(sqs, queues["on_alarm"]) == waiting(sqs, queues["on_sagemaker_event"]) == 1  # still there
        to_alarm = {"FunctionName": f"{ACCOUNT_ARN}:OnAlarm", "InvocationType": "Event", "Payload": ANY}
        invoked.add_client_error("invoke", "TooManyRequestsException", "Rate exceeded", 429, to_alarm)
        invoked.add_response("invoke", {"StatusCode": 202},
                             {"FunctionName": f"{ACCOUNT_ARN}:OnSagemakerEvent", "InvocationType": "Event",
                              "Payload": json.dumps(training).encode()})  # fmt: skip
        delivered, failed = letters.redrive()
        assert delivered == 1 and len(failed) == 1 and "on_alarm" in failed[0] and "Rate exceeded" in failed[0]
        assert waiting(sqs, queues["on_sagemaker_event"]) == 0  # delivered: deleted
        invoked.assert_no_pending_responses()


def test_the_local_dead_letter_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    path = tmp_path / "dead-letters.jsonl"
    alarm = load_event("alarm_drift")
    path.write_text(
        json.dumps({"handler": "on_alarm", "attempts": 3, "event": alarm}) + "\n"
        + json.dumps({"handler": "on_sagemaker_event", "attempts": 3, "event": "garbage"}) + "\n"
    )  # fmt: skip
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    assert cli.main(["dlq", "list"]) == 0
    out = capsys.readouterr().out
    assert "2 dead letters" in out and alarm["id"] in out and "failed 3 times" in out
    sent: list[Any] = []
    delivered, failed = LocalDeadLetters(path).redrive(lambda event: sent.append(event) or ["on_alarm"])
    assert (delivered, sent) == (1, [alarm])
    assert len(failed) == 1 and "not an event" in failed[0]
    assert [d.event for d in LocalDeadLetters(path).letters()] == ["garbage"]  # only what could not be sent stays
