"""What IAM checks for a request, read from the maintained IAM reference: actions, ARNs
filled from the request, condition keys, dependent actions; and the packaged policies'
decision on the requests the code makes."""

from __future__ import annotations

import json

import pytest

from tests.iam import ACCOUNT, REGION, REPO, resolve
from tuneloop.local.authorization import UnmappedRequest, accesses
from tuneloop.local.iam import Policy, decide

WHERE = {"account": ACCOUNT, "region": REGION}
ROLE = f"arn:aws:iam::{ACCOUNT}:role/tuneloop-dev-sagemaker-execution"


def checked(signing: str, operation: str, params: dict[str, object]) -> list[tuple[str, str]]:
    return [(a.action, a.resource) for a in accesses(signing, operation, params, **WHERE)]


def test_a_training_job_is_the_job_its_role_and_its_tags_with_the_limits_as_condition_keys() -> None:
    request = {"TrainingJobName": "tl-dev-abcdefghijkl-train-1", "RoleArn": ROLE,
               "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
               "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
               "Tags": [{"Key": "tuneloop:project", "Value": "p"}]}  # fmt: skip
    found = accesses("sagemaker", "CreateTrainingJob", request, **WHERE)
    job = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/tl-dev-abcdefghijkl-train-1"
    assert [(a.action, a.resource) for a in found] == [
        ("sagemaker:CreateTrainingJob", job), ("sagemaker:AddTags", job), ("iam:PassRole", ROLE)]  # fmt: skip
    assert found[0].context["sagemaker:InstanceTypes"] == ("ml.m5.large",)
    assert found[0].context["sagemaker:MaxRuntimeInSeconds"] == "3600.0"
    assert found[0].context["aws:RequestTag/tuneloop:project"] == "p"
    assert found[2].context["iam:PassedToService"] == "sagemaker.amazonaws.com"


def test_each_service_the_code_calls_maps_to_its_action_and_resource() -> None:
    arn = f"{REGION}:{ACCOUNT}"
    assert checked("s3", "PutObject", {"Bucket": "b", "Key": "labels/x"}) == [
        ("s3:PutObject", "arn:aws:s3:::b/labels/x")
    ]
    assert checked("s3", "HeadObject", {"Bucket": "b", "Key": "k"}) == [("s3:GetObject", "arn:aws:s3:::b/k")]
    assert checked("s3", "ListObjectsV2", {"Bucket": "b", "Prefix": "p/"}) == [("s3:ListBucket", "arn:aws:s3:::b")]
    assert checked("s3", "CopyObject", {"Bucket": "b", "Key": "new", "CopySource": "b/old"}) == [
        ("s3:PutObject", "arn:aws:s3:::b/new"), ("s3:GetObject", "arn:aws:s3:::b/old")]  # fmt: skip
    assert checked("dynamodb", "Query", {"TableName": "t", "IndexName": "by-state"}) == [
        ("dynamodb:Query", f"arn:aws:dynamodb:{arn}:table/t/index/by-state")]  # fmt: skip
    assert checked("dynamodb", "TransactWriteItems", {"TransactItems": [{"Put": {"TableName": "a"}},
                                                                         {"ConditionCheck": {"TableName": "b"}}]}) == [
        ("dynamodb:PutItem", f"arn:aws:dynamodb:{arn}:table/a"),
        ("dynamodb:ConditionCheckItem", f"arn:aws:dynamodb:{arn}:table/b")]  # fmt: skip
    assert checked("monitoring", "PutMetricAlarm", {"AlarmName": "tl-dev-x"}) == [
        ("cloudwatch:PutMetricAlarm", f"arn:aws:cloudwatch:{arn}:alarm:tl-dev-x")]  # fmt: skip
    assert checked("monitoring", "GetMetricData", {}) == [("cloudwatch:GetMetricData", "*")]
    assert checked("sns", "Publish", {"TopicArn": f"arn:aws:sns:{arn}:tuneloop-dev-notices"}) == [
        ("sns:Publish", f"arn:aws:sns:{arn}:tuneloop-dev-notices")]  # fmt: skip
    assert checked("sagemaker", "InvokeEndpointWithResponseStream", {"EndpointName": "tl-dev-p"}) == [
        ("sagemaker:InvokeEndpoint", f"arn:aws:sagemaker:{arn}:endpoint/tl-dev-p")]  # fmt: skip
    assert checked("sagemaker", "AddTags", {"ResourceArn": f"arn:aws:sagemaker:{arn}:model/m", "Tags": []}) == [
        ("sagemaker:AddTags", f"arn:aws:sagemaker:{arn}:model/m")]  # fmt: skip
    assert checked("pricing", "GetProducts", {"ServiceCode": "AmazonSageMaker"}) == [("pricing:GetProducts", "*")]


def test_a_request_the_reference_cannot_place_is_refused_not_guessed() -> None:
    with pytest.raises(UnmappedRequest, match="the request names no training-job"):
        accesses("sagemaker", "DescribeTrainingJob", {}, **WHERE)
    with pytest.raises(UnmappedRequest, match="no such action"):
        accesses("sagemaker", "MakeItSo", {}, **WHERE)
    with pytest.raises(UnmappedRequest, match="no such service"):
        accesses("nosuchservice", "Get", {}, **WHERE)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_stages_policy_allows_its_own_jobs_within_its_limits_and_nothing_else(stage: str) -> None:
    raw = json.loads((REPO / ".chalice" / f"policy-{stage}.json").read_text())
    policy = Policy.parse(f"policy-{stage}", resolve(raw, stage))
    role = f"arn:aws:iam::{ACCOUNT}:role/tuneloop-{stage}-sagemaker-execution"

    def allowed(job: str, instance: str, runtime: int, role_arn: str = role) -> bool:
        request = {"TrainingJobName": job, "RoleArn": role_arn, "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
                   "ResourceConfig": {"InstanceType": instance, "InstanceCount": 1, "VolumeSizeInGB": 30},
                   "Tags": [{"Key": "tuneloop:project", "Value": "p"}]}  # fmt: skip
        return all(decide([policy], a.action, a.resource, a.context).allowed
                   for a in accesses("sagemaker", "CreateTrainingJob", request, **WHERE))  # fmt: skip

    assert allowed(f"tl-{stage}-abcdefghijkl-train-1", "ml.m5.large", 3600)
    other = "prod" if stage == "dev" else "dev"
    assert not allowed(f"tl-{other}-abcdefghijkl-train-1", "ml.m5.large", 3600)  # another stage's name
    assert not allowed(f"tl-{stage}-abcdefghijkl-train-1", "ml.p4d.24xlarge", 3600)  # outside the instance limits
    assert not allowed(f"tl-{stage}-abcdefghijkl-train-1", "ml.m5.large", 10**7)  # past the runtime limit
    assert not allowed(f"tl-{stage}-abcdefghijkl-train-1", "ml.m5.large", 3600,
                       f"arn:aws:iam::{ACCOUNT}:role/admin")  # fmt: skip


def test_roles_lists_whole_arns_and_tagging_on_create_are_all_checked() -> None:
    arn = f"{REGION}:{ACCOUNT}"
    tuning = {"HyperParameterTuningJobName": "tl-dev-x-tune-1", "HyperParameterTuningJobConfig": {},
              "TrainingJobDefinition": {"RoleArn": f"arn:aws:iam::{ACCOUNT}:role/Admin"}}  # fmt: skip
    assert ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/Admin") in checked(
        "sagemaker", "CreateHyperParameterTuningJob", tuning)  # fmt: skip
    assert checked("monitoring", "DeleteAlarms", {"AlarmNames": ["tl-dev-a", "tl-prod-b"]}) == [
        ("cloudwatch:DeleteAlarms", f"arn:aws:cloudwatch:{arn}:alarm:tl-dev-a"),
        ("cloudwatch:DeleteAlarms", f"arn:aws:cloudwatch:{arn}:alarm:tl-prod-b")]  # fmt: skip
    foreign = "arn:aws:sns:eu-west-1:999999999999:tuneloop-dev-notices"
    assert checked("sns", "Publish", {"TopicArn": foreign, "Message": "m"}) == [("sns:Publish", foreign)]
    package = f"arn:aws:sagemaker:{arn}:model-package/tl-dev-demo/3"
    assert checked("sagemaker", "UpdateModelPackage", {"ModelPackageArn": package}) == [
        ("sagemaker:UpdateModelPackage", package)]  # fmt: skip
    assert checked("sagemaker", "DescribeModelPackage", {"ModelPackageName": package}) == [
        ("sagemaker:DescribeModelPackage", package)]  # fmt: skip
    queue = "https://sqs.eu-west-1.amazonaws.com/999999999999/tuneloop-dev-api-dlq"
    assert checked("sqs", "SendMessage", {"QueueUrl": queue, "MessageBody": "x"}) == [
        ("sqs:SendMessage", "arn:aws:sqs:eu-west-1:999999999999:tuneloop-dev-api-dlq")]  # fmt: skip
    target = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/tl-dev-p/variant/AllTraffic",
              "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
              "Tags": {"tuneloop:stage": "dev"}}  # fmt: skip
    assert [a for a, _ in checked("application-autoscaling", "RegisterScalableTarget", target)] == [
        "application-autoscaling:RegisterScalableTarget", "application-autoscaling:TagResource"]  # fmt: skip
    alarm = {"AlarmName": "tl-dev-x", "Tags": [{"Key": "tuneloop:project", "Value": "p"}]}
    assert [a for a, _ in checked("monitoring", "PutMetricAlarm", alarm)] == [
        "cloudwatch:PutMetricAlarm", "cloudwatch:TagResource"]  # fmt: skip
