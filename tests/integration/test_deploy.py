"""`tuneloop deploy` from an empty account: the order is part of the test. S3 and STS are
moto's (in process); ECR and CloudFormation (whose SAM transform moto lacks) are botocore
Stubbers, every request validated against the service model; the packaging is the real
`chalice package`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from tuneloop import configure, deploy
from tuneloop.client import CliError
from tuneloop.stages import StageProfile

pytestmark = pytest.mark.integration
REGION, ACCOUNT = "eu-west-1", "123456789012"
STACK = "tuneloop-dev"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def account(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's in-process AWS: no endpoint of the local cloud's, test credentials."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


class Stack:
    """CloudFormation as a Stubber answers it; executing the change set makes what the
    stack makes that the rest of the deploy uses (the data bucket, in moto's S3)."""

    def __init__(self, client: Any, s3: Any) -> None:
        self._client, self._s3 = client, s3
        self.exceptions = client.exceptions

    def execute_change_set(self, **request: Any) -> Any:
        answer = self._client.execute_change_set(**request)
        self._s3.create_bucket(Bucket=deploy.data_bucket("dev", ACCOUNT, REGION),
                               CreateBucketConfiguration={"LocationConstraint": REGION})  # fmt: skip
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def stacks(status: str) -> dict[str, Any]:
    outputs = [{"OutputKey": "EndpointURL", "OutputValue": f"https://abc.execute-api.{REGION}.amazonaws.com/api/"},
               {"OutputKey": "DataBucketName", "OutputValue": deploy.data_bucket("dev", ACCOUNT, REGION)}]  # fmt: skip
    return {"Stacks": [{"StackName": STACK, "CreationTime": "2026-12-06T00:00:00Z", "StackStatus": status,
                        "Outputs": outputs}]}  # fmt: skip


def pin_every_image(ecr: Stubber, images: dict[str, str]) -> None:
    for uri in images.values():
        account, _, repository, tag = configure._image_parts(uri)
        ecr.add_response(
            "batch_get_image",
            {"images": [{"imageId": {"imageTag": tag, "imageDigest": DIGEST}}]},
            {"registryId": account, "repositoryName": repository, "imageIds": [{"imageTag": tag}]},
        )


def test_deploy_from_an_empty_account_in_one_call_and_again_as_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import mock_aws

    monkeypatch.setenv("TUNELOOP_CONFIG_HOME", str(tmp_path / "config"))
    images = configure.images(REGION)
    said: list[str] = []
    with mock_aws():
        s3, sts = boto3.client("s3", region_name=REGION), boto3.client("sts", region_name=REGION)
        ecr = boto3.client("ecr", region_name=REGION)
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        with Stubber(ecr) as ecr_stub, Stubber(cloudformation) as cf:
            pin_every_image(ecr_stub, images)
            for _ in range(2):  # nothing left of an earlier stack; no stack to update
                cf.add_client_error("describe_stacks", "ValidationError", f"Stack with id {STACK} does not exist")
            parameters = [{"ParameterKey": "ImageRepositoryArns", "ParameterValue": ANY},
                          {"ParameterKey": "ManageApiGatewayAccount", "ParameterValue": "true"},
                          {"ParameterKey": "Stage", "ParameterValue": "dev"}]  # fmt: skip
            cf.add_response("create_change_set", {"Id": "arn:cs", "StackId": "arn:stack"}, {
                "StackName": STACK, "ChangeSetName": ANY, "ChangeSetType": "CREATE", "TemplateURL": ANY,
                "Parameters": parameters, "Capabilities": deploy.CAPABILITIES, "Tags": ANY})  # fmt: skip
            cf.add_response("describe_change_set", {"Status": "CREATE_COMPLETE", "Changes": [
                {"Type": "Resource", "ResourceChange": {"Action": "Add", "LogicalResourceId": "DataBucket",
                                                        "ResourceType": "AWS::S3::Bucket"}},
                {"Type": "Resource", "ResourceChange": {"Action": "Add", "LogicalResourceId": "APIHandler",
                                                        "ResourceType": "AWS::Lambda::Function"}}]},
                {"StackName": STACK, "ChangeSetName": ANY})  # fmt: skip
            earlier = {"StackId": "arn:stack", "EventId": "e0", "StackName": STACK, "LogicalResourceId": STACK,
                       "Timestamp": "2026-12-06T00:00:00Z", "ResourceStatus": "REVIEW_IN_PROGRESS"}  # fmt: skip
            cf.add_response("describe_stack_events", {"StackEvents": [earlier]}, {"StackName": STACK})
            cf.add_response("execute_change_set", {}, {"StackName": STACK, "ChangeSetName": ANY})
            cf.add_response(
                "describe_stack_events",
                {
                    "StackEvents": [
                        {
                            "StackId": "arn:stack",
                            "EventId": "e2",
                            "StackName": STACK,
                            "LogicalResourceId": STACK,
                            "Timestamp": "2026-12-06T00:05:00Z",
                            "ResourceStatus": "CREATE_COMPLETE",
                        },
                        {
                            "StackId": "arn:stack",
                            "EventId": "e1",
                            "StackName": STACK,
                            "LogicalResourceId": "DataBucket",
                            "Timestamp": "2026-12-06T00:01:00Z",
                            "ResourceStatus": "CREATE_COMPLETE",
                        },
                    ]
                },
                {"StackName": STACK},
            )
            cf.add_response("describe_stacks", stacks("CREATE_COMPLETE"), {"StackName": STACK})
            cf.add_response("describe_stacks", stacks("CREATE_COMPLETE"), {"StackName": STACK})
            deployer = deploy.Deployer("dev", REGION, s3, sts, ecr, Stack(cloudformation, s3), say=said.append,
                                       poll_s=0)  # fmt: skip
            profile = deployer.deploy(tmp_path / "work")
            cf.assert_no_pending_responses()
            ecr_stub.assert_no_pending_responses()
        # What the account holds now: the artifacts bucket, private and encrypted, with the
        # functions' zip and the template; the training code in the data bucket.
        artifacts = deploy.artifacts_bucket("dev", ACCOUNT, REGION)
        assert s3.get_public_access_block(Bucket=artifacts)["PublicAccessBlockConfiguration"]["BlockPublicPolicy"]
        assert s3.get_bucket_versioning(Bucket=artifacts)["Status"] == "Enabled"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=artifacts)["Contents"]]
        assert any(k.endswith("/deployment.zip") for k in keys) and any(k.endswith("/template.json") for k in keys)
        template_key = next(k for k in keys if k.endswith("/template.json"))
        import json

        template = json.loads(s3.get_object(Bucket=artifacts, Key=template_key)["Body"].read())
        function = template["Resources"]["APIHandler"]["Properties"]
        assert function["CodeUri"].startswith(f"s3://{artifacts}/packages/")
        environment = function["Environment"]["Variables"]
        assert environment["TUNELOOP_TRAINING_IMAGE"].endswith(f"@{DIGEST}")  # pinned, in the package only
        assert (
            environment["TUNELOOP_SAGEMAKER_ROLE_ARN"]
            == f"arn:aws:iam::{ACCOUNT}:role/tuneloop-dev-sagemaker-execution"
        )
        code = [o["Key"] for o in s3.list_objects_v2(Bucket=profile.bucket, Prefix="code/")["Contents"]]
        assert any(k.endswith("/sourcedir.tar.gz") for k in code) and environment["TUNELOOP_CODE_URI"].endswith(
            code[0].split("/")[1])  # fmt: skip
        assert StageProfile.load("dev").api_url == f"https://abc.execute-api.{REGION}.amazonaws.com/api/"
        assert any("CREATE_COMPLETE" in line and "DataBucket" in line for line in said)
        assert not any("REVIEW_IN_PROGRESS" in line for line in said)  # what came before this deploy is not shown
        assert any(line.strip().startswith("Add") and "APIHandler" in line for line in said)

        # Nothing changed: a no-op that says so.
        said.clear()
        with Stubber(ecr) as ecr_stub, Stubber(cloudformation) as cf:
            pin_every_image(ecr_stub, images)
            cf.add_response("describe_stacks", stacks("CREATE_COMPLETE"), {"StackName": STACK})
            cf.add_response("describe_stacks", stacks("CREATE_COMPLETE"), {"StackName": STACK})
            cf.add_response("create_change_set", {"Id": "arn:cs2"}, {
                "StackName": STACK, "ChangeSetName": ANY, "ChangeSetType": "UPDATE", "TemplateURL": ANY,
                "Parameters": ANY, "Capabilities": deploy.CAPABILITIES, "Tags": ANY})  # fmt: skip
            cf.add_response("describe_change_set", {"Status": "FAILED", "StatusReason": (
                "The submitted information didn't contain changes. Submit different information to create a "
                "change set.")}, {"StackName": STACK, "ChangeSetName": ANY})  # fmt: skip
            cf.add_response("delete_change_set", {}, {"StackName": STACK, "ChangeSetName": ANY})
            cf.add_response("describe_stacks", stacks("CREATE_COMPLETE"), {"StackName": STACK})
            deploy.Deployer("dev", REGION, s3, sts, ecr, Stack(cloudformation, s3), say=said.append,
                            poll_s=0).deploy(tmp_path / "again")  # fmt: skip
            cf.assert_no_pending_responses()
        assert f"stack {STACK} is up to date: nothing to deploy" in said


def test_a_failed_stack_says_why_in_one_line(tmp_path: Path) -> None:
    cloudformation = boto3.client("cloudformation", region_name=REGION, aws_access_key_id="x",
                                  aws_secret_access_key="x")  # fmt: skip
    with Stubber(cloudformation) as cf:
        cf.add_response(
            "describe_stack_events",
            {
                "StackEvents": [
                    {
                        "StackId": "s",
                        "EventId": "e3",
                        "StackName": STACK,
                        "LogicalResourceId": STACK,
                        "Timestamp": "2026-12-06T00:03:00Z",
                        "ResourceStatus": "ROLLBACK_COMPLETE",
                    },
                    {
                        "StackId": "s",
                        "EventId": "e2",
                        "StackName": STACK,
                        "LogicalResourceId": "APIHandler",
                        "Timestamp": "2026-12-06T00:02:00Z",
                        "ResourceStatus": "CREATE_FAILED",
                        "ResourceStatusReason": 'Resource handler returned message: "concurrency limit"',
                    },
                    {
                        "StackId": "s",
                        "EventId": "e1",
                        "StackName": STACK,
                        "LogicalResourceId": "DataBucket",
                        "Timestamp": "2026-12-06T00:01:00Z",
                        "ResourceStatus": "CREATE_COMPLETE",
                    },
                ]
            },
            {"StackName": STACK},
        )
        cf.add_response("describe_stacks", stacks("ROLLBACK_COMPLETE"), {"StackName": STACK})
        deployer = deploy.Deployer("dev", REGION, None, None, None, cloudformation, say=lambda _: None, poll_s=0)
        with pytest.raises(CliError, match=r"^stack tuneloop-dev is ROLLBACK_COMPLETE: APIHandler: Resource handler"):
            deployer.follow()


def test_data_an_earlier_stack_kept_is_named_before_anything_is_made() -> None:
    """CloudFormation does not adopt a bucket or table of the same name: a first deploy over
    what `destroy` kept would fail half-way, so it is refused first, saying what to do."""
    from moto import mock_aws

    with mock_aws():
        s3, sts = boto3.client("s3", region_name=REGION), boto3.client("sts", region_name=REGION)
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        kept = deploy.data_bucket("dev", ACCOUNT, REGION)
        s3.create_bucket(Bucket=kept, CreateBucketConfiguration={"LocationConstraint": REGION})
        with Stubber(cloudformation) as cf:
            cf.add_client_error("describe_stacks", "ValidationError", f"Stack with id {STACK} does not exist")
            deployer = deploy.Deployer("dev", REGION, s3, sts, None, cloudformation, say=lambda _: None, poll_s=0)
            with pytest.raises(CliError, match=f"bucket {kept}.*tuneloop destroy --stage dev --delete-data"):
                deployer.deploy(Path("unused"))
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [kept]  # no artifacts bucket was made
