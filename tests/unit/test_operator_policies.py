"""The starter policies for the people who use a stage: submitters start, stop and retrain
runs; approvers decide runs waiting for approval and set the projects' rules. Each route of
the API is checked against both, as IAM would decide it (route-level execute-api ARNs)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest

import app as app_module

REPO = Path(__file__).resolve().parents[2]
POLICIES = {name: json.loads((REPO / "infra" / "operators" / f"{name}-policy.json").read_text())
            for name in ("submitter", "approver")}  # fmt: skip
API = "arn:aws:execute-api:eu-west-1:123456789012:a1b2c3d4e5/api"
# Who may call what: deciding a run and changing a project's rules (approval: auto, the
# gates) are an approver's; the rest of the changes a submitter's; reading, anyone's.
APPROVERS_ONLY = {("POST", "/runs/{run_id}/approve"), ("POST", "/runs/{run_id}/reject"),
                  ("POST", "/projects"), ("PUT", "/projects/{name}")}  # fmt: skip


def allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    """IAM's decision for one identity policy: an explicit Deny wins, then any Allow."""

    def matches(statement: dict[str, Any]) -> bool:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        return any(fnmatch.fnmatch(action.lower(), a.lower()) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in resources
        )

    found = [s["Effect"] for s in policy["Statement"] if matches(s)]
    return "Deny" not in found and "Allow" in found


def routes() -> list[tuple[str, str]]:
    return sorted((method, path) for path, methods in app_module.app.routes.items() for method in methods)


def arn(method: str, path: str) -> str:
    return f"{API}/{method}{path.replace('{run_id}', 'abcdefghijkl').replace('{name}', 'demo')}"


@pytest.mark.parametrize("method,path", routes())
def test_each_route_is_for_the_right_people(method: str, path: str) -> None:
    submitter = allowed(POLICIES["submitter"], "execute-api:Invoke", arn(method, path))
    approver = allowed(POLICIES["approver"], "execute-api:Invoke", arn(method, path))
    if method == "GET":
        assert submitter and approver
    elif (method, path) in APPROVERS_ONLY:
        assert approver and not submitter
    else:
        assert submitter and not approver


def test_a_submitter_cannot_approve_around_tuneloop() -> None:
    """SageMaker's own UpdateModelPackage would approve a package without the API (and its
    audit trail): the submitter's policy denies it on tuneloop's packages."""
    package = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/tl-demo/3"
    assert not allowed(POLICIES["submitter"], "sagemaker:UpdateModelPackage", package)
    for key in ("datasets/demo/d1/reviews.jsonl", "feedback/demo/labels.jsonl"):
        assert allowed(POLICIES["submitter"], "s3:PutObject", f"arn:aws:s3:::tuneloop-dev-123456789012-eu-west-1/{key}")
    assert not allowed(POLICIES["submitter"], "s3:PutObject", "arn:aws:s3:::tuneloop-dev-1-eu-west-1/code/x/train.py")
