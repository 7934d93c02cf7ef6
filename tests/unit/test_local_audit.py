"""The local cloud's call audit: each logged call decided under its function's role from the
template, resolved for the local stack; the statements no call needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.local.audit import audit, function_policies, resolve

WHERE = {"stage": "local", "bucket": "tuneloop-local", "account": "123456789012", "region": "us-east-1"}


def logged(path: Path, *calls: tuple[str, str, str, dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps({"function": f, "service": s, "operation": o, "params": p}) + "\n"
                            for f, s, o, p in calls))  # fmt: skip
    return path


def test_a_call_outside_its_functions_role_is_named_and_the_rest_pass(tmp_path: Path) -> None:
    calls = logged(
        tmp_path / "calls.jsonl",
        ("api_handler", "s3", "PutObject", {"Bucket": "tuneloop-local", "Key": "labels/demo/x.jsonl"}),
        ("api_handler", "dynamodb", "GetItem", {"TableName": "tuneloop-local-runs", "Key": {}}),
        # The drop handler's role starts processing jobs only, never a training job.
        ("on_dataset_uploaded", "sagemaker", "CreateTrainingJob", {
            "TrainingJobName": "tl-local-abcdefghijkl-train-1", "ResourceConfig": {"InstanceType": "ml.m5.large"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}}),
        # Another stage's table is no table of this stack's.
        ("reconcile", "dynamodb", "Query", {"TableName": "tuneloop-prod-runs", "IndexName": "by-state"}),
    )  # fmt: skip
    found = audit(calls, **WHERE)
    assert found.calls == 4
    assert [line.split(" on ")[0] for line in found.denied] == [
        "on_dataset_uploaded: sagemaker:CreateTrainingJob", "reconcile: dynamodb:Query"]  # fmt: skip
    assert "RunStore" not in found.unused["policy-dev.json"] and "FeedbackLabels" not in found.unused["policy-dev.json"]
    assert "Notices" in found.unused["policy-dev.json"]


def test_the_policies_resolve_for_the_local_stack_or_say_what_they_cannot() -> None:
    policies = function_policies(**WHERE)
    assert set(policies) >= {"api_handler", "on_dataset_uploaded", "on_sagemaker_event", "on_alarm"}
    text = json.dumps([s.resources for s in policies["api_handler"][1].statements])
    assert "tl-local-*" in text and "arn:aws:s3:::tuneloop-local/labels/*" in text and "${" not in text
    with pytest.raises(ValueError, match="Ref Nowhere"):
        resolve({"Ref": "Nowhere"}, {})
    with pytest.raises(ValueError, match="is no name the local stack resolves"):
        resolve({"Fn::Sub": "arn:${Unknown}"}, {})
    assert (
        resolve({"Fn::Sub": "${DataBucket.Arn}/x/${!aws:username}"}, {"DataBucket.Arn": "b"}) == "b/x/${aws:username}"
    )
    with pytest.raises(ValueError, match="aws:username"):  # CloudFormation takes a policy variable only as ${!...}
        resolve({"Fn::Sub": "${DataBucket.Arn}/${aws:username}"}, {"DataBucket.Arn": "b"})
