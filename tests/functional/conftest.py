from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from chalice.test import Client

import app as app_module
from tests.conftest import BUCKET


class Api:
    """Chalice's test client with JSON helpers."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        response = self.client.http.request(method, path, headers=all_headers, body=raw)
        payload = json.loads(response.body) if response.body else None
        return response.status_code, payload

    def invoke(self, handler: str, event: dict[str, Any]) -> Any:
        return self.client.lambda_.invoke(handler, event).payload


@pytest.fixture
def api(deps: Any) -> Iterator[Api]:
    with Client(app_module.app) as client:
        yield Api(client)


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
    for prefix in ("labels/", "feedback/", "refused/", "notices/"):
        for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=o["Key"])
    yield client
