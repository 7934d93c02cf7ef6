"""The local EventBridge: real uploads to moto S3 reach the app's handlers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import app as app_module
from chalicelib.domain import names
from tests.conftest import BUCKET, DEMO_CONFIG, STAGE, load_event
from tuneloop.local.router import EventRouter, complete_envelope

pytestmark = pytest.mark.integration


@pytest.fixture
def router(deps: Any, tmp_path: Path) -> Iterator[EventRouter]:
    s3 = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={"EventBridgeConfiguration": {}})
    router = EventRouter(
        app_module, boto3.client("sqs"), boto3.client("events"), tmp_path / "dead.jsonl", visibility_timeout_s=1
    )
    router.install()
    router.drain()  # leftovers of earlier tests
    deps.service.create_project("demo", DEMO_CONFIG)
    yield router


def test_routes_follow_the_apps_patterns(router: EventRouter) -> None:
    assert {r.name for r in router.routes} == {"on_dataset_uploaded", "on_sagemaker_event", "on_alarm"}
    alarm = load_event("alarm_drift")
    assert [r.name for r in router.matching_routes(alarm)] == ["on_alarm"]
    alarm["detail"]["alarmName"] = "someone-elses-alarm"
    assert router.matching_routes(alarm) == []


def test_upload_by_any_s3_client_starts_a_run(router: EventRouter, deps: Any) -> None:
    key = "datasets/demo/batch 7/c++ été.jsonl"
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=b'{"text": "fine", "label": "positive"}\n')
    assert router.drain() >= 1
    page = deps.service.runs.page(project="demo")
    assert len(page.items) == 1
    # moto sends the key unencoded; the router encodes it as S3 does; intake decodes once.
    assert page.items[0].run.dataset_uri == f"s3://{BUCKET}/{key}"


def test_sent_events_keep_their_id_so_replays_dedupe(router: EventRouter, deps: Any) -> None:
    run_id = deps.service.start_run("demo", f"s3://{BUCKET}/datasets/demo/x/y.jsonl")[0].run.run_id
    event = load_event("processing_job_completed")
    event["detail"]["ProcessingJobName"] = names.job_name(run_id, "prepare", stage=STAGE)
    event["detail"]["Tags"] = {}
    assert router.send(event) == ["on_sagemaker_event"]
    assert router.send(event) == ["on_sagemaker_event"]  # replayed
    router.drain()
    history = deps.service.runs.get(run_id).run.history
    assert [h.event_id for h in history].count(event["id"]) == 1


def test_failing_handler_is_retried_then_dead_lettered(
    router: EventRouter, deps: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(event: Any, context: Any) -> None:
        calls.append(event["id"])
        raise RuntimeError("handler crashed")

    monkeypatch.setattr(router, "handler", lambda name: broken)
    event = load_event("alarm_drift")
    router.send(event)
    import time

    deadline = time.monotonic() + 20
    while not (tmp_path / "dead.jsonl").exists() and time.monotonic() < deadline:
        router.poll(next(r for r in router.routes if r.name == "on_alarm"), wait_s=1)
    assert len(calls) == 3
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert dead[0]["event"]["id"] == event["id"] and dead[0]["attempts"] == 3


def test_moto_envelopes_are_completed() -> None:
    raw = {
        "id": "x",
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": "2026-11-27T10:00:00Z",
        "detail": {"object": {"key": "a b/c+d.jsonl"}},
    }
    event = complete_envelope(raw)
    assert event["account"] and event["resources"] == [] and event["version"] == "0"
    assert event["detail"]["object"]["key"] == "a+b/c%2Bd.jsonl"


def test_each_moto_s3_event_gets_its_own_id() -> None:
    base = {"id": "same-for-all", "source": "aws.s3", "detail-type": "Object Created", "time": "2026-11-27T10:00:00Z"}
    one = complete_envelope(
        {**base, "detail": {"bucket": {"name": "b"}, "object": {"key": "a.jsonl", "sequencer": "01"}}}
    )
    two = complete_envelope(
        {**base, "detail": {"bucket": {"name": "b"}, "object": {"key": "b.jsonl", "sequencer": "02"}}}
    )
    again = complete_envelope(
        {**base, "detail": {"bucket": {"name": "b"}, "object": {"key": "a.jsonl", "sequencer": "01"}}}
    )
    assert one["id"] != two["id"] and one["id"] == again["id"]


ROW = b'{"text": "fine", "label": "positive"}\n'


def redelivery(bucket: str, key: str, event_id: str) -> dict[str, Any]:
    """The Object Created event S3 would send again for the object now under ``key``."""
    head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
    event = load_event("s3_object_created", id=event_id)
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"] = {
        "key": key,
        "size": head["ContentLength"],
        "etag": head["ETag"].strip('"'),
        "version-id": head.get("VersionId", "null"),
        "sequencer": "617f08299329d189",
    }
    return event


def dataset_runs(deps: Any, key: str) -> list[str]:
    return [r.run.run_id for r in deps.service.runs.page(project="demo").items if r.run.dataset_uri.endswith(key)]


def test_unversioned_bucket_same_object_one_run_new_bytes_a_new_run(router: EventRouter, deps: Any) -> None:
    s3 = boto3.client("s3")
    key = "datasets/demo/replay/data.jsonl"
    s3.put_object(Bucket=BUCKET, Key=key, Body=ROW)
    router.drain()
    first = dataset_runs(deps, key)
    assert len(first) == 1
    router.send(redelivery(BUCKET, key, "a-second-delivery"))  # same object, a new event id
    s3.put_object(Bucket=BUCKET, Key=key, Body=ROW)  # the same bytes uploaded again
    router.drain()
    assert dataset_runs(deps, key) == first
    s3.put_object(Bucket=BUCKET, Key=key, Body=ROW * 2)  # new bytes under the same key
    router.drain()
    assert len(dataset_runs(deps, key)) == 2


def test_versioned_bucket_each_version_one_run(router: EventRouter, deps: Any, settings: Any) -> None:
    import dataclasses

    from chalicelib import deps as deps_module

    bucket = "tuneloop-versioned"
    s3 = boto3.client("s3")
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
        )
    versioned = deps_module.build(dataclasses.replace(settings, bucket=bucket))
    deps_module.override(versioned)
    key = "datasets/demo/versions/data.jsonl"
    s3.put_object(Bucket=bucket, Key=key, Body=ROW)
    router.drain()
    assert len(dataset_runs(versioned, key)) == 1
    router.send(redelivery(bucket, key, "a-second-delivery"))
    router.drain()
    assert len(dataset_runs(versioned, key)) == 1
    s3.put_object(Bucket=bucket, Key=key, Body=ROW)  # the same bytes, but a new version
    router.drain()
    assert len(dataset_runs(versioned, key)) == 2
