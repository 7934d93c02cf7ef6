"""The Lambda role may write to S3 only where the functions' code writes: the prefixes are
derived from the code itself (every call site that writes, found in the source, then
exercised for real and its keys recorded), and compared with each deployed policy."""

from __future__ import annotations

import ast
import fnmatch
import inspect
import json
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from botocore.stub import Stubber

from chalicelib.domain import names
from chalicelib.pricing import PriceBook, PriceListApi
from tests.conftest import BUCKET, STAGE, load_event
from tests.functional.conftest import Api
from tests.functional.test_feedback import feedback_event
from tests.functional.test_pricing import product
from tests.iam import BUCKET_ARN, allowed, resolve

REPO = Path(__file__).resolve().parents[2]
# What writes an object: the S3 operations, and boto3's transfer helpers that make them.
WRITE_OPERATIONS = frozenset({"PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy"})
WRITE_METHODS = frozenset({"put_object", "copy_object", "copy", "upload_file", "upload_fileobj",
                           "create_multipart_upload", "upload_part", "upload_part_copy"})  # fmt: skip


def lambda_sources() -> list[Path]:
    """What ships to Lambda: app.py and chalicelib/."""
    return [REPO / "app.py", *sorted((REPO / "chalicelib").rglob("*.py"))]


def write_sites() -> set[tuple[str, str]]:
    """(file, function) of every call in the Lambda code that writes to S3."""
    sites = set()
    for path in lambda_sources():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                called = node.func if isinstance(node, ast.Call) else None
                if isinstance(called, ast.Attribute) and called.attr in WRITE_METHODS:
                    sites.add((path.relative_to(REPO).as_posix(), function.name))
    return sites


def policy_write_prefixes(path: Path) -> set[str]:
    """The key prefixes a policy's s3:PutObject statements allow, each in the data bucket."""
    prefixes = set()
    for statement in resolve(json.loads(path.read_text()))["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if not any(fnmatch.fnmatchcase("s3:PutObject", action) for action in actions):
            continue
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            bucket, _, key = resource.partition("/")
            assert bucket == BUCKET_ARN, f"{path.name}: {resource} is not the data bucket"
            prefixes.add(key.removesuffix("*"))
    return prefixes


def test_the_lambda_roles_write_only_under_the_prefixes_the_code_writes(
    api: Api, demo: dict[str, Any], s3: Any, deps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.budget import StageBudget

    recorded: list[tuple[str, str, str]] = []
    real = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation in WRITE_OPERATIONS:
            for frame in inspect.stack()[1:]:
                path = Path(frame.filename).resolve()
                if path == REPO / "app.py" or (REPO / "chalicelib") in path.parents:
                    recorded.append((path.relative_to(REPO).as_posix(), frame.function, str(params.get("Key"))))
                    break
        return real(self, operation, params)

    # Every code path that writes: feedback by its two doors, a refused upload, a notice.
    labels = [{"inference_id": "req-1", "label": "positive"}]
    body = b'{"inference_id": "req-2", "label": "negative"}\n'
    s3.put_object(Bucket=BUCKET, Key="feedback/demo/day-1/labels.jsonl", Body=body)
    run_id = api.call("POST", "/runs", {"project": "demo", "dataset_uri": f"s3://{BUCKET}/datasets/demo/d/x.jsonl"})[
        1]["run_id"]  # fmt: skip
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    assert api.call("POST", "/projects/demo/feedback", {"labels": labels})[0] == 202
    assert "feedback" in api.invoke("on_dataset_uploaded", feedback_event("feedback/demo/day-1/labels.jsonl",
                                                                          len(body)))  # fmt: skip
    # An upload that starts nothing is recorded.
    assert "ignored" in api.invoke("on_dataset_uploaded", feedback_event("feedback/ghost/labels.jsonl", 10))
    # A run that fails makes a notice; so does spend crossing the stage's budget.
    failed = load_event("processing_job_failed", id="prepare-failed")
    failed["detail"].update(ProcessingJobName=names.job_name(run_id, "prepare", stage=STAGE), Tags={})
    assert api.invoke("on_sagemaker_event", failed)["state"] == "failed"
    spent = StageBudget(deps.service, lambda run: {"total_usd": 5.0, "complete": True}, "us-east-1", STAGE, 1,
                        deps.service.clock, crossed=deps.notices.tell_budget, ttl_s=0)  # fmt: skip
    deps.service.budget = spent.refusal
    assert api.call("POST", "/runs", {"project": "demo", "dataset_uri": f"s3://{BUCKET}/datasets/demo/e/x.jsonl"})[
        0] == 409  # fmt: skip
    # A price the shipped table lacks, read from the Price List and cached in the bucket.
    pricing = boto3.client("pricing", region_name="us-east-1")
    with Stubber(pricing) as stub:
        for _ in range(2):
            stub.add_response("get_products", {"PriceList": [product("EU-Host:ml.m5.large", "0.13")]})
        book = PriceBook(PriceListApi(pricing, s3, BUCKET, deps.service.clock))
        assert book.hourly("eu-west-1", "hosting", "ml.m5.large").usd == 0.13
    monkeypatch.undo()

    sites = write_sites()
    assert sites, "no S3 write found in the Lambda code: the search is broken"
    assert {(path, function) for path, function, _ in recorded} == sites, "a writing code path was not exercised"
    written = {key.split("/", 1)[0] + "/" for _, _, key in recorded}
    assert written == {"labels/", "refused/", "notices/", "prices/"}
    for path in sorted((REPO / ".chalice").glob("policy-*.json")):
        prefixes = policy_write_prefixes(path)
        assert prefixes <= written, f"{path.name} lets the functions write under {sorted(prefixes - written)}"
        # As IAM decides it (its * spans /): no key elsewhere that merely contains the prefix.
        policy = resolve(json.loads(path.read_text()))
        for key in ("code/v1/train.py", "runs/x/labels/y.jsonl", "datasets/p/labels/x.jsonl", "models/labels/m"):
            assert not allowed(policy, "s3:PutObject", f"{BUCKET_ARN}/{key}"), (path.name, key)
        assert not allowed(policy, "s3:PutObject", f"{BUCKET_ARN.replace('-dev-', '-dev-logs-')}/labels/x")
    for stage in ("dev", "prod"):  # the full policy allows what the code writes
        assert policy_write_prefixes(REPO / ".chalice" / f"policy-{stage}.json") == written
