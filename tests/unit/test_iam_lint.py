"""parliament (an IAM policy linter) over every policy tuneloop deploys: the Lambda role's
per stage and the SageMaker execution role's. Unknown actions, condition keys that an
action does not support, malformed ARNs and needless Resource "*" are findings."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ACCOUNT, REGION = "123456789012", "eu-west-1"


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


def resolve(value: Any, bucket_arn: str) -> Any:
    """CloudFormation's intrinsics, as they resolve in one account and region."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "Fn::Sub":
            text = inner if isinstance(inner, str) else inner[0]
            for name, real in {"${AWS::Partition}": "aws", "${AWS::Region}": REGION, "${AWS::AccountId}": ACCOUNT,
                               "${DataBucket.Arn}": bucket_arn}.items():  # fmt: skip
                text = text.replace(name, real)
            return text
        if key == "Fn::GetAtt":
            return bucket_arn
        if key == "Ref":
            return {"AWS::AccountId": ACCOUNT, "ImageRepositoryArns": IMAGE_REPOSITORIES}.get(inner, inner)
    if isinstance(value, dict):
        return {k: resolve(v, bucket_arn) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, bucket_arn) for v in value]
    return value


TEMPLATE = json.loads((REPO / "infra" / "resources.json").read_text())
IMAGE_REPOSITORIES = TEMPLATE["Parameters"]["ImageRepositoryArns"]["Default"].split(",")


def policies() -> list[tuple[str, dict[str, Any]]]:
    files = [*sorted((REPO / ".chalice").glob("policy-*.json")), *sorted((REPO / "infra" / "operators").glob("*.json"))]
    found = [(path.name, json.loads(path.read_text())) for path in files]
    bucket = f"arn:aws:s3:::tuneloop-dev-{ACCOUNT}-{REGION}"
    for name, resource in TEMPLATE["Resources"].items():
        if resource.get("Type") == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                found.append((f"{name}/{policy['PolicyName']}", resolve(policy["PolicyDocument"], bucket)))
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
    assert prefixes == ["capture/*", "holdout/*", "runs/*"]
