from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.client
import pytest
from botocore.exceptions import ClientError
from chalice.test import Client

import app as app_module
from tests.conftest import BUCKET, STAGE
from tests.policy_check import FUNCTION, PolicyCheck, Used, recording


class Api:
    """Chalice's test client with JSON helpers."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        token = FUNCTION.set("api_handler")
        try:
            response = self.client.http.request(method, path, headers=all_headers, body=raw)
        finally:
            FUNCTION.reset(token)
        payload = json.loads(response.body) if response.body else None
        return response.status_code, payload

    def invoke(self, handler: str, event: dict[str, Any]) -> Any:
        token = FUNCTION.set(handler)
        try:
            return self.client.lambda_.invoke(handler, event).payload
        finally:
            FUNCTION.reset(token)


@pytest.fixture
def api(deps: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The app through Chalice's test client; every AWS call a function makes is decided
    under that function's policy from the template, and a denied one fails the test."""
    settings = deps.settings
    check = PolicyCheck({settings.projects_table: f"tuneloop-{STAGE}-projects",
                         settings.runs_table: f"tuneloop-{STAGE}-runs"})  # fmt: skip
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording(check))
    with Client(app_module.app) as client:
        yield Api(client)
    monkeypatch.undo()
    Used.add(check)
    denied = check.denied()
    assert not denied, "calls the function's role would be denied on AWS:\n" + "\n".join(denied)


@pytest.fixture
def demo(api: Api) -> dict[str, Any]:
    from tests.conftest import DEMO_CONFIG

    status, body = api.call("POST", "/projects", {"name": "demo", "config": DEMO_CONFIG})
    assert status == 201, body
    return body


@pytest.fixture
def s3(deps: Any) -> Iterator[Any]:
    client = boto3.client("s3")
    try:
        client.create_bucket(Bucket=BUCKET)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    # The bucket outlives a test (the tables do not): start from no labels, no refusals.
    for prefix in ("labels/", "feedback/", "refused/", "notices/", "prices/"):
        for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=o["Key"])
    yield client
