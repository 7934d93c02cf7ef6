"""parliament (an IAM policy linter) over every policy tuneloop deploys: the Lambda roles'
per stage, the SageMaker execution role's and the starter policies for people. Unknown actions, condition keys that an
action does not support, malformed ARNs and needless Resource "*" are findings."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.iam import REPO, TEMPLATE, resolve


def parliament() -> Any:
    # parliament 1.6 still finds its data files through pkg_resources, which setuptools
    # no longer ships: give it the one function it calls.
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            spec = importlib.util.find_spec(package)
            assert spec is not None and spec.origin is not None
            return str(Path(spec.origin).parent / name)

        shim.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    import parliament as linter

    return linter


def policies() -> list[tuple[str, dict[str, Any]]]:
    """Every policy tuneloop deploys: the Lambda roles' per stage, and the template's roles
    and managed policies (the execution role, the starter policies for people)."""
    found = [
        (path.name, resolve(json.loads(path.read_text()))) for path in sorted((REPO / ".chalice").glob("policy-*.json"))
    ]
    for name, resource in TEMPLATE["Resources"].items():
        if resource.get("Type") == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                found.append((f"{name}/{policy['PolicyName']}", resolve(policy["PolicyDocument"])))
        elif resource.get("Type") == "AWS::IAM::ManagedPolicy":
            found.append((name, resolve(resource["Properties"]["PolicyDocument"])))
    return found


@pytest.mark.parametrize("name,policy", policies(), ids=[name for name, _ in policies()])
def test_parliament_finds_nothing(name: str, policy: dict[str, Any]) -> None:
    linter = parliament()
    analysed = linter.analyze_policy_string(json.dumps(policy))
    findings = [(f.issue, f.detail) for f in analysed.findings]
    assert findings == [], findings


def test_only_this_accounts_sagemaker_assumes_the_execution_role() -> None:
    """The confused deputy: SageMaker acting for another account must not get the role.
    (A trust policy has no Resource, which parliament reads as malformed: checked here.)"""
    trust = TEMPLATE["Resources"]["SageMakerExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"].endswith(":${AWS::AccountId}:*")


def test_jobs_read_their_inputs_and_write_only_their_outputs() -> None:
    """Not code/ (the training code every job runs), not datasets/: a job cannot change
    what the next job runs or another project's data."""
    (policy,) = TEMPLATE["Resources"]["SageMakerExecutionRole"]["Properties"]["Policies"]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    writes = [s for s in statements.values() if any(a in ("s3:PutObject", "s3:*", "s3:DeleteObject")
                                                    for a in s["Action"])]  # fmt: skip
    assert [s["Sid"] for s in writes] == ["WriteOutputs"]
    prefixes = sorted(r["Fn::Sub"].split("}/", 1)[1] for r in writes[0]["Resource"])
    assert prefixes == ["capture/*", "checkpoints/*", "holdout/*", "runs/*"]


def test_every_prefix_a_job_reads_by_prefix_it_may_list() -> None:
    """SageMaker lists an S3Prefix input (a dataset, a batch transform's input, a capture
    window) with the execution role before it reads it: a readable prefix that may not be
    listed fails the job on AWS with AccessDenied. Only code/ is read by exact key."""
    (policy,) = TEMPLATE["Resources"]["SageMakerExecutionRole"]["Properties"]["Policies"]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    read = {r["Fn::Sub"].split("}/", 1)[1] for r in statements["ReadInputs"]["Resource"]}
    listed = set(statements["DataList"]["Condition"]["StringLike"]["s3:prefix"])
    assert read <= listed, f"readable but not listable: {sorted(read - listed)}"
    assert "checkpoints/*" in read


def test_the_data_bucket_expires_what_only_serves_for_a_while() -> None:
    """Checkpoints (only for resuming), captured traffic (after its retention), the refused
    upload records and notices, replaced object versions and unfinished uploads; nothing else."""
    rules = {r["Id"]: r for r in TEMPLATE["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert {r.get("Prefix") for r in rules.values()} == {"checkpoints/", "capture/", "refused/", "notices/", None}
    assert rules["expire-replaced-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert "ExpirationInDays" not in rules["expire-replaced-versions"]  # current objects stay
    parameters = TEMPLATE["Parameters"]
    assert parameters["CheckpointRetentionDays"]["Default"] * 86400 > 432000  # past prod's longest job


def test_the_deployers_policy_covers_the_stack_and_nothing_outside_it() -> None:
    """infra/deployer-policy.json: what `tuneloop deploy` and `destroy` need (CloudFormation
    acts with the caller's rights), for every kind of resource the packaged template has,
    on tuneloop-* names only. Linted like every other policy."""
    from tests.iam import allowed

    policy = json.loads((REPO / "infra" / "deployer-policy.json").read_text())
    linter = parliament()
    findings = [(f.issue, f.detail) for f in linter.analyze_policy_string(json.dumps(policy)).findings]
    # A SAM template's change set needs CreateChangeSet on AWS's transform too (AWS's SAM
    # docs); parliament's table of resource types predates it.
    transform = ("RESOURCE_MISMATCH", [{"action": "cloudformation:CreateChangeSet",
                                        "required_format": "arn:*:cloudformation:*:*:stack/*/*"}])  # fmt: skip
    assert [f for f in findings if f != transform] == [], findings
    account, region = "123456789012", "eu-west-1"
    made = {
        "cloudformation:ExecuteChangeSet": f"arn:aws:cloudformation:{region}:{account}:stack/tuneloop-dev/abc",
        "s3:CreateBucket": "arn:aws:s3:::tuneloop-dev-artifacts-123456789012-eu-west-1",
        "s3:PutLifecycleConfiguration": "arn:aws:s3:::tuneloop-dev-123456789012-eu-west-1",
        "dynamodb:CreateTable": f"arn:aws:dynamodb:{region}:{account}:table/tuneloop-dev-runs",
        "lambda:CreateFunction": f"arn:aws:lambda:{region}:{account}:function:tuneloop-dev-APIHandler-x1",
        "iam:CreateRole": f"arn:aws:iam::{account}:role/tuneloop-dev-sagemaker-execution",
        "iam:CreatePolicy": f"arn:aws:iam::{account}:policy/tuneloop-dev-approver",
        "apigateway:POST": f"arn:aws:apigateway:{region}::/restapis",
        "events:PutRule": f"arn:aws:events:{region}:{account}:rule/tuneloop-dev-OnAlarmEvent-x1",
        "sqs:CreateQueue": f"arn:aws:sqs:{region}:{account}:tuneloop-dev-on_alarm-dlq",
        "sns:CreateTopic": f"arn:aws:sns:{region}:{account}:tuneloop-dev-notices",
        "logs:CreateLogGroup": f"arn:aws:logs:{region}:{account}:log-group:/tuneloop/dev/api-access",
        "ecr:BatchGetImage": f"arn:aws:ecr:{region}:763104351884:repository/huggingface-pytorch-training",
    }
    for action, resource in made.items():
        assert allowed(policy, action, resource), (action, resource)
    # destroy: through the stage's API, and --delete-data's log groups; deploy: the images of a
    # region whose Deep Learning Containers live in another account (af-south-1's).
    used = (("execute-api:Invoke", f"arn:aws:execute-api:{region}:{account}:a1b2c3/api/DELETE/projects/demo"),
            ("logs:DeleteLogGroup", f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/tuneloop-dev-api_handler"),
            ("ecr:BatchGetImage", "arn:aws:ecr:af-south-1:626614931356:repository/pytorch-inference"))  # fmt: skip
    for action, resource in used:
        assert allowed(policy, action, resource), (action, resource)
    assert not allowed(policy, "ecr:BatchGetImage", f"arn:aws:ecr:{region}:{account}:repository/private-app")
    outside = (("iam:CreateRole", f"arn:aws:iam::{account}:role/admin"),
               ("s3:DeleteBucket", "arn:aws:s3:::someone-elses-data"),
               ("lambda:UpdateFunctionCode", f"arn:aws:lambda:{region}:{account}:function:payments"))  # fmt: skip
    for action, resource in outside:
        assert not allowed(policy, action, resource), (action, resource)
    services = {action.split(":")[0] for statement in policy["Statement"] for action in (
        statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])}  # fmt: skip
    needs = {"DynamoDB": "dynamodb", "IAM": "iam", "Lambda": "lambda", "Logs": "logs", "S3": "s3", "SNS": "sns",
             "SQS": "sqs", "ApiGateway": "apigateway", "Serverless": "lambda"}  # fmt: skip
    # chalice adds the functions and the API (infra/resources.json merges into them).
    kinds = {r["Type"] for r in TEMPLATE["Resources"].values() if "Type" in r}
    kinds |= {"AWS::Serverless::Function", "AWS::ApiGateway::RestApi"}
    for kind in kinds:
        assert needs[kind.split("::")[1]] in services, kind
