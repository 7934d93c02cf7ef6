"""`tuneloop destroy` past the projects: the stack (a Stubber, validated against
CloudFormation's model), then what it retained (moto's S3 and DynamoDB): kept and priced,
or deleted when asked."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from tuneloop import destroy

pytestmark = pytest.mark.integration
REGION, ACCOUNT, STACK = "eu-west-1", "123456789012", "tuneloop-dev"


def test_the_stack_goes_and_what_it_kept_is_said_with_its_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    said: list[str] = []
    with mock_aws():
        s3, dynamodb = boto3.client("s3", region_name=REGION), boto3.client("dynamodb", region_name=REGION)
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        teardown = destroy.StackTeardown("dev", REGION, ACCOUNT, {"s3": s3, "dynamodb": dynamodb,
                                         "cloudformation": cloudformation}, said.append, poll_s=0)  # fmt: skip
        data, logs, artifacts = teardown.retained["buckets"]
        for bucket in (data, logs, artifacts):
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_versioning(Bucket=data, VersioningConfiguration={"Status": "Enabled"})
        for body in (b"x" * 2_000_000, b"y" * 1_000_000):  # two versions of one key: both are kept, both cost
            s3.put_object(Bucket=data, Key="runs/a/model.tar.gz", Body=body)
        for table in teardown.retained["tables"]:
            dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                  AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                                  KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])  # fmt: skip
        with Stubber(cloudformation) as cf:
            described = {"Stacks": [{"StackName": STACK, "CreationTime": "2026-12-06T00:00:00Z",
                                     "StackStatus": "UPDATE_COMPLETE"}]}  # fmt: skip
            cf.add_response("describe_stacks", described, {"StackName": STACK})
            cf.add_response("delete_stack", {}, {"StackName": STACK})
            cf.add_response(
                "describe_stack_events",
                {
                    "StackEvents": [
                        {
                            "StackId": "s",
                            "EventId": "e1",
                            "StackName": STACK,
                            "LogicalResourceId": "APIHandler",
                            "Timestamp": "2026-12-06T01:00:00Z",
                            "ResourceStatus": "DELETE_COMPLETE",
                        }
                    ]
                },
                {"StackName": STACK},
            )
            cf.add_client_error("describe_stacks", "ValidationError", f"Stack with id {STACK} does not exist")
            teardown.delete_stack()
            cf.assert_no_pending_responses()
        assert any("DELETE_COMPLETE" in line and "APIHandler" in line for line in said)
        kept = teardown.remains(delete_data=False)
        assert f"bucket {data}: 3.0 MB" in kept and "table tuneloop-dev-runs: 0.0 MB" in kept
        assert kept[-1].startswith("kept data costs about $0.00 a month") and "--delete-data" in kept[-1]
        assert teardown.remains(delete_data=True) == []
        assert s3.list_buckets()["Buckets"] == [] and dynamodb.list_tables()["TableNames"] == []
