"""The starter policies the stack makes for the people who use it (SubmitterPolicy,
ApproverPolicy): submitters start, stop and retrain runs; approvers decide runs waiting for
approval and set the projects' rules. Each route of the API is decided against both as IAM
would (route-level execute-api ARNs of the stack's own API), and so are their S3 writes."""

from __future__ import annotations

from typing import Any

import pytest

import app as app_module
from tests.iam import ACCOUNT, API_ID, BUCKET_ARN, REGION, TEMPLATE, allowed, resolve

POLICIES = {name: resolve(TEMPLATE["Resources"][f"{name.title()}Policy"]["Properties"]["PolicyDocument"])
            for name in ("submitter", "approver")}  # fmt: skip
API = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/api"
# Who may call what: deciding a run and changing a project's rules (approval: auto, the
# gates) or deleting it are an approver's; the rest of the changes a submitter's; reading, anyone's.
APPROVERS_ONLY = {("POST", "/runs/{run_id}/approve"), ("POST", "/runs/{run_id}/reject"),
                  ("POST", "/projects"), ("PUT", "/projects/{name}"), ("DELETE", "/projects/{name}")}  # fmt: skip


def routes() -> list[tuple[str, str]]:
    return sorted((method, path) for path, methods in app_module.app.routes.items() for method in methods)


def arn(method: str, path: str, api: str = API) -> str:
    return f"{api}/{method}{path.replace('{run_id}', 'abcdefghijkl').replace('{name}', 'demo')}"


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
    # Only this stack's API: another API in the account (another stage's) is another policy's.
    other = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:zzzzzzzzzz/api"
    assert not allowed(POLICIES["submitter"], "execute-api:Invoke", arn(method, path, other))


def test_a_submitter_drops_data_but_cannot_approve_around_tuneloop() -> None:
    """SageMaker's own UpdateModelPackage would approve a package without the API (and its
    audit trail): the submitter's policy denies it on tuneloop's packages. A submitter writes
    datasets and labels, nothing else, in the stage's data bucket only."""
    submitter: Any = POLICIES["submitter"]
    package = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/tl-demo/3"
    assert not allowed(submitter, "sagemaker:UpdateModelPackage", package)
    for key in ("datasets/demo/d1/reviews.jsonl", "feedback/demo/labels.jsonl"):
        assert allowed(submitter, "s3:PutObject", f"{BUCKET_ARN}/{key}")
    for key in ("code/x/train.py", "models/datasets/m.tar.gz", "runs/x/checkpoints/datasets/y", "labels/demo/x"):
        assert not allowed(submitter, "s3:PutObject", f"{BUCKET_ARN}/{key}"), key
    assert not allowed(submitter, "s3:PutObject", "arn:aws:s3:::tuneloop-prod-1-eu-west-1/datasets/demo/x")
