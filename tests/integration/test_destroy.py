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
        logs = boto3.client("logs", region_name=REGION)
        for group in ("/tuneloop/dev/api-access", "/aws/lambda/tuneloop-dev-api_handler", "/tuneloop/prod/api-access"):
            logs.create_log_group(logGroupName=group)
        teardown = destroy.StackTeardown("dev", REGION, ACCOUNT, {"s3": s3, "dynamodb": dynamodb, "logs": logs,
                                         "cloudformation": cloudformation}, said.append, poll_s=0)  # fmt: skip
        data, access_logs, artifacts = teardown.retained["buckets"]
        for bucket in (data, access_logs, artifacts):
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_versioning(Bucket=data, VersioningConfiguration={"Status": "Enabled"})
        for body in (b"x" * 2_000_000, b"y" * 1_000_000):  # two versions of one key: both are kept, both cost
            s3.put_object(Bucket=data, Key="runs/a/model.tar.gz", Body=body)
        for table in teardown.retained["tables"]:
            dynamodb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST", DeletionProtectionEnabled=True,
                                  AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                                  KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])  # fmt: skip
        stack_id = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/1a2b"

        def event(event_id: str, resource: str, status: str) -> dict[str, str]:
            return {"StackId": stack_id, "EventId": event_id, "StackName": STACK, "LogicalResourceId": resource,
                    "Timestamp": "2026-12-06T01:00:00Z", "ResourceStatus": status}  # fmt: skip

        with Stubber(cloudformation) as cf:
            described = {"Stacks": [{"StackName": STACK, "StackId": stack_id, "CreationTime": "2026-12-06T00:00:00Z",
                                     "StackStatus": "UPDATE_COMPLETE"}]}  # fmt: skip
            cf.add_response("describe_stacks", described, {"StackName": STACK})
            earlier = event("e0", STACK, "UPDATE_COMPLETE")
            cf.add_response("describe_stack_events", {"StackEvents": [earlier]}, {"StackName": stack_id})
            cf.add_response("delete_stack", {}, {"StackName": STACK})
            # Once deleted, the stack is found by its id only (by its name it "does not exist").
            deleted = [event("e2", STACK, "DELETE_COMPLETE"), event("e1", "APIHandler", "DELETE_COMPLETE"), earlier]
            cf.add_response("describe_stack_events", {"StackEvents": deleted}, {"StackName": stack_id})
            gone = {"Stacks": [{**described["Stacks"][0], "StackStatus": "DELETE_COMPLETE"}]}
            cf.add_response("describe_stacks", gone, {"StackName": stack_id})
            teardown.delete_stack()
            cf.assert_no_pending_responses()
        assert any("DELETE_COMPLETE" in line and "APIHandler" in line for line in said)
        assert not any("UPDATE_COMPLETE" in line for line in said)  # the stack's earlier life is not this call's
        kept = teardown.remains(delete_data=False)
        assert f"bucket {data}: 3.0 MB" in kept and "table tuneloop-dev-runs: 0.0 MB" in kept
        assert kept[-1].startswith("kept data costs about $0.00 a month") and "--delete-data" in kept[-1]
        assert "log group /tuneloop/dev/api-access: 0.0 MB" in kept
        assert not any("/tuneloop/prod/" in line for line in kept)  # another stage's
        assert teardown.remains(delete_data=True) == []
        assert s3.list_buckets()["Buckets"] == [] and dynamodb.list_tables()["TableNames"] == []
        assert [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]] == ["/tuneloop/prod/api-access"]
