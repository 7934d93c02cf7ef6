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


def test_the_data_bucket_expires_what_only_serves_for_a_while() -> None:
    """Checkpoints (only for resuming), captured traffic (after its retention), the refused
    upload records, replaced object versions and unfinished uploads; nothing else."""
    rules = {r["Id"]: r for r in TEMPLATE["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert {r.get("Prefix") for r in rules.values()} == {"checkpoints/", "capture/", "refused/", None}
    assert rules["expire-replaced-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert "ExpirationInDays" not in rules["expire-replaced-versions"]  # current objects stay
    parameters = TEMPLATE["Parameters"]
    assert parameters["CheckpointRetentionDays"]["Default"] * 86400 > 432000  # past prod's longest job
