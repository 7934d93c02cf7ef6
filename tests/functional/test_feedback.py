"""Feedback's two doors: an S3 drop under feedback/<project>/ and POST /projects/{name}/feedback.
Both validate row by row, store once (a redelivery or a retry writes nothing again) and
leave a receipt that says what was accepted and what was refused, with line and reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import BUCKET, DEMO_CONFIG, STAGE, load_event
from tests.functional.conftest import Api


def stored(s3: Any, project: str) -> dict[str, list[dict[str, Any]]]:
    """labels/<project>/*.jsonl, by key."""
    out = {}
    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"labels/{project}/").get("Contents", []):
        if o["Key"].endswith(".jsonl"):
            body = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().decode()
            out[o["Key"]] = [json.loads(line) for line in body.splitlines()]
    return out


def test_posted_labels_are_stored_once(api: Api, demo: dict[str, Any], s3: Any) -> None:
    labels = [{"inference_id": "req-1", "label": "positive"}, {"inference_id": "req-2", "label": "negative"}]
    status, receipt = api.call("POST", "/projects/demo/feedback", {"labels": labels})
    assert status == 202, receipt
    assert receipt["accepted"] == 2 and receipt["refused"] == 0 and not receipt["repeat"]
    [rows] = stored(s3, "demo").values()
    assert [(r["inference_id"], r["label"]) for r in rows] == [("req-1", "positive"), ("req-2", "negative")]
    assert all(r["received_at"].endswith("Z") and r["source"].startswith("api:") for r in rows)
    # The same rows again, or the same Idempotency-Key with any rows: the first receipt.
    status, again = api.call("POST", "/projects/demo/feedback", {"labels": labels})
    assert status == 200 and again["repeat"] and again["delivery"] == receipt["delivery"]
    first = api.call("POST", "/projects/demo/feedback", {"labels": labels[:1]}, headers={"Idempotency-Key": "k1"})
    retry = api.call("POST", "/projects/demo/feedback", {"labels": labels[:1]}, headers={"Idempotency-Key": "k1"})
    assert first[0] == 202 and retry[0] == 200 and retry[1]["delivery"] == first[1]["delivery"]
    assert len(stored(s3, "demo")) == 2
    status, listed = api.call("GET", "/projects/demo/feedback")
    assert status == 200 and {r["delivery"] for r in listed["receipts"]} == {receipt["delivery"], first[1]["delivery"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"labels": []}, "labels"),
        ({"labels": "positive"}, "labels"),
        ({"labels": [{"inference_id": "a", "label": "x"}, {"inference_id": "b"}]}, "labels[1].label"),
        ({"labels": [{"inference_id": "", "label": "x"}]}, "labels[0].inference_id"),
        ({"labels": [{"inference_id": "x" * 65, "label": "x"}]}, "labels[0].inference_id"),
        ({"labels": [["a", "x"]]}, "labels[0]"),
        ({"labels": [{"inference_id": "a", "label": "x"}] * 1001}, "labels"),
        ({"labels": [], "extra": 1}, "extra"),
    ],
)
def test_a_bad_feedback_body_is_a_400_naming_the_field(
    api: Api, demo: dict[str, Any], s3: Any, body: Any, field: str
) -> None:
    status, answer = api.call("POST", "/projects/demo/feedback", body)
    assert status == 400, answer
    assert answer["Message"].startswith(f"BadRequestError: {field}") or f"{field}" in answer["Message"], answer
    assert stored(s3, "demo") == {}


def test_a_language_models_feedback_is_corrections_ratings_and_preferences(api: Api, s3: Any) -> None:
    """A causal-LM project takes, for a captured request, the answer it should have given,
    a rating from 1 to 5, or that its answer is preferred over another request's; by both
    doors, each row checked, a refused one named with its field. A label is a classifier's."""
    assert api.call("POST", "/projects/nope/feedback", {"labels": [{"inference_id": "a", "label": "x"}]})[0] == 404
    config = {**DEMO_CONFIG, "task": "causal-lm", "base_model": "random:llama-tiny"}
    config.pop("gates", None)
    config.pop("quality", None)  # floors on production quality are for classification
    status, body = api.call("POST", "/projects", {"name": "lm", "config": config})
    assert status == 201, body
    status, answer = api.call("POST", "/projects/lm/feedback", {"labels": [{"inference_id": "a", "label": "x"}]})
    assert status == 400 and "labels[0]: give exactly one of completion, rating, preferred_over" in answer["Message"]
    rows = [{"inference_id": "a", "completion": '{"city": "Oslo"}'}, {"inference_id": "b", "rating": 4},
            {"inference_id": "c", "preferred_over": "d"}]  # fmt: skip
    status, receipt = api.call("POST", "/projects/lm/feedback", {"labels": rows})
    assert status == 202 and receipt["accepted"] == 3, receipt
    [kept] = stored(s3, "lm").values()
    assert [{k: r[k] for k in r if k not in ("received_at", "source")} for r in kept] == rows
    for bad, field in (
        ({"inference_id": "a", "rating": 9}, ".rating"),
        ({"inference_id": "a", "rating": True}, ".rating"),
        ({"inference_id": "a", "rating": "³"}, ".rating"),  # a digit to isdigit(), not to int()
        ({"inference_id": "a", "rating": "9" * 5000}, ".rating"),
        ({"inference_id": "a", "completion": ""}, ": give exactly one"),
        ({"inference_id": "a", "completion": "x", "rating": 3}, ": give exactly one"),
        ({"inference_id": "a", "preferred_over": "a"}, ".preferred_over"),
        ({"inference_id": "a", "completion": "x" * 8001}, ".completion"),
    ):
        status, answer = api.call("POST", "/projects/lm/feedback", {"labels": [bad]})
        assert status == 400 and f"labels[0]{field}" in answer["Message"], answer
    # The S3 door: a CSV of corrections and ratings, its bad row named by line and reason.
    csv = b'inference_id,completion,rating\ne,"{""city"": ""Lima""}",\nf,,5\ng,,six\n'
    s3.put_object(Bucket=BUCKET, Key="feedback/lm/day-1.csv", Body=csv)
    result = api.invoke("on_dataset_uploaded", feedback_event("feedback/lm/day-1.csv", len(csv), etag="l1"))
    assert (result["feedback"]["accepted"], result["feedback"]["refused"]) == (2, 1), result
    receipt = next(r for r in api.call("GET", "/projects/lm/feedback")[1]["receipts"] if r["refused"])
    assert receipt["errors"] == [{"line": 4, "reason": "rating: must be an integer from 1 to 5, got 'six'"}]


def feedback_event(key: str, size: int, etag: str = "e1", event_id: str = "fb-1") -> dict[str, Any]:
    event = load_event("s3_object_created", id=event_id)
    event["detail"]["object"].update(key=key, size=size, etag=etag)
    return event


def test_a_dropped_labels_file_is_validated_row_by_row(api: Api, demo: dict[str, Any], s3: Any) -> None:
    lines = [
        json.dumps({"inference_id": "req-1", "label": "positive"}),
        "{not json",
        json.dumps({"inference_id": "req-2"}),
        "",
        json.dumps({"inference_id": "req-3", "label": "negative"}),
    ]
    body = "\n".join(lines).encode()
    s3.put_object(Bucket=BUCKET, Key="feedback/demo/day-1/labels.jsonl", Body=body)
    result = api.invoke("on_dataset_uploaded", feedback_event("feedback/demo/day-1/labels.jsonl", len(body)))
    assert result["feedback"]["accepted"] == 2 and result["feedback"]["refused"] == 2
    [(_, rows)] = stored(s3, "demo").items()
    assert [r["inference_id"] for r in rows] == ["req-1", "req-3"]
    assert rows[0]["source"] == f"s3://{BUCKET}/feedback/demo/day-1/labels.jsonl"
    [receipt] = api.call("GET", "/projects/demo/feedback")[1]["receipts"]
    assert [(e["line"], e["reason"].split(":")[0]) for e in receipt["errors"]] == [(2, "bad JSON"), (3, "label")]
    # A redelivery (another event id, same upload) stores nothing again; no run starts.
    again = api.invoke("on_dataset_uploaded", feedback_event("feedback/demo/day-1/labels.jsonl", len(body),
                                                                event_id="fb-2"))  # fmt: skip
    assert again["feedback"]["repeat"] and len(stored(s3, "demo")) == 1
    assert api.call("GET", "/runs?limit=10")[1]["runs"] == []


def test_a_dropped_csv_and_what_is_refused_whole(api: Api, demo: dict[str, Any], s3: Any) -> None:
    csv = b"label,inference_id\npositive,req-9\n,req-10\n"
    s3.put_object(Bucket=BUCKET, Key="feedback/demo/labels.csv", Body=csv)
    result = api.invoke("on_dataset_uploaded", feedback_event("feedback/demo/labels.csv", len(csv), etag="c1"))
    assert (result["feedback"]["accepted"], result["feedback"]["refused"]) == (1, 1)
    wrong = b"id,label\nreq-1,positive\n"
    s3.put_object(Bucket=BUCKET, Key="feedback/demo/wrong.csv", Body=wrong)
    result = api.invoke("on_dataset_uploaded", feedback_event("feedback/demo/wrong.csv", len(wrong), etag="c2"))
    assert result["feedback"]["accepted"] == 0
    receipt = next(r for r in api.call("GET", "/projects/demo/feedback")[1]["receipts"] if r["accepted"] == 0)
    assert "lacks inference_id" in receipt["errors"][0]["reason"]
    latin = "inference_id,label\nreq-1,n\xe9gatif\n".encode("latin-1")
    s3.put_object(Bucket=BUCKET, Key="feedback/demo/latin.csv", Body=latin)
    result = api.invoke("on_dataset_uploaded", feedback_event("feedback/demo/latin.csv", len(latin), etag="c3"))
    assert result["feedback"]["accepted"] == 0 and result["feedback"]["refused"] == 1
    # Not a labels file, an unknown project: logged and ignored, nothing stored.
    for key in ("feedback/demo/notes.txt", "feedback/ghost/labels.jsonl", "feedback/labels.jsonl"):
        assert "ignored" in api.invoke("on_dataset_uploaded", feedback_event(key, 10))
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix="labels/ghost/").get("Contents")
    [refused] = api.call("GET", "/drops")[1]["refused"]
    assert (refused["key"], refused["reason"]) == ("feedback/ghost/labels.jsonl", "no project named 'ghost'")


def test_an_s3_failure_is_a_503_that_says_nothing_was_stored(
    api: Api, demo: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    from chalicelib.feedback import FeedbackInbox

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "reduce your request rate"}}, "PutObject")

    monkeypatch.setattr(FeedbackInbox, "store", refuse)
    status, answer = api.call("POST", "/projects/demo/feedback", {"labels": [{"inference_id": "a", "label": "x"}]})
    assert status == 503 and "S3 said SlowDown" in answer["Message"] and "nothing was stored" in answer["Message"]
    monkeypatch.setattr(FeedbackInbox, "receipts", refuse)
    status, answer = api.call("GET", "/projects/demo/feedback")
    assert status == 503 and "retry" in answer["Message"]


def test_a_drift_alarm_waits_for_labels_and_their_arrival_starts_exactly_one_retraining_run(
    api: Api, deps: Any, s3: Any
) -> None:
    """The scheduled check fires a drift alarm before any label came back, on a model that
    has learned from every row there is: no retraining run starts, and the run says what
    it waits for. Labels that fall short are counted; the delivery that reaches
    retrain.min_new_labels starts exactly one retraining run, whose prepare job learns
    from them (the labels and the captured requests they label); later ones start none."""
    import dataclasses

    import boto3
    from botocore.stub import ANY, Stubber

    from chalicelib.domain import names
    from chalicelib.domain.commands import StartProcessingJob
    from chalicelib.sagemaker import SageMakerExecutors
    from tests.integration.test_drift_schedule import deployed

    for prefix in ("datasets/waits/", "capture/waits/"):
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=o["Key"])
    s3.put_object(
        Bucket=BUCKET, Key="datasets/waits/ds-1/reviews.jsonl", Body=b'{"text": "fine", "label": "positive"}\n'
    )
    config = {**DEMO_CONFIG, "retrain": {"cooldown_s": 0, "max_per_day": 5}}
    assert api.call("POST", "/projects", {"name": "waits", "config": config})[0] == 201
    clock = deps.service.clock  # the run was created a minute ago: every label below came after it
    deps.service.clock = lambda: clock() - timedelta(minutes=1)
    parent = deployed(deps.service, "waits", "s3://tuneloop-test/datasets/waits/ds-1/reviews.jsonl")
    deps.service.clock = clock
    capture = "".join(json.dumps({"eventMetadata": {"inferenceId": f"req-{n}"}}) + "\n" for n in range(40))
    s3.put_object(
        Bucket=BUCKET, Key=f"capture/waits/{parent}/tl-waits/AllTraffic/2026/12/06/10/c.jsonl", Body=capture.encode()
    )

    alarm = load_event("alarm_drift", id="drift-waits")
    alarm["detail"]["alarmName"] = names.drift_alarm_name(parent, "prediction_psi", stage=STAGE)
    assert api.invoke("on_alarm", alarm)["state"] == "deployed"

    def children() -> list[dict[str, Any]]:
        return [r for r in api.call("GET", "/runs?project=waits")[1]["runs"] if r["parent_run_id"] == parent]

    run = api.call("GET", f"/runs/{parent}")[1]
    assert children() == [] and run["retraining_waits_for_data"] == [alarm["detail"]["alarmName"]]
    assert run["history"][-1]["reason"].endswith(
        "drift in prediction_psi; nothing new to learn from yet: 0 labelled production row(s), 0 new dataset(s); "
        "a retraining run starts when 30 labels (or a new dataset) have arrived"
    ), run["history"][-1]["reason"]

    def send(first: int, count: int) -> None:
        labels = [{"inference_id": f"req-{n}", "label": "negative"} for n in range(first, first + count)]
        assert api.call("POST", "/projects/waits/feedback", {"labels": labels})[0] == 202

    send(0, 12)
    reason = api.call("GET", f"/runs/{parent}")[1]["history"][-1]["reason"]
    assert children() == [] and "still waits" in reason and "12 labelled production row(s)" in reason, reason
    send(12, 20)
    [child] = children()
    send(32, 8)
    assert [c["run_id"] for c in children()] == [child["run_id"]]  # exactly one
    shown = api.call("GET", f"/runs/{child['run_id']}")[1]
    assert "waited for data: 32 labelled production row(s)" in shown["history"][0]["reason"], shown["history"][0]
    assert api.call("GET", f"/runs/{parent}")[1]["retraining_waits_for_data"] == []

    # What its prepare job is asked to read: the project's datasets, the labels that
    # arrived and the captured requests they label (request checked against botocore's model).
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    seen: dict[str, Any] = {}
    client.meta.events.register("provide-client-params.sagemaker.CreateProcessingJob",
                                lambda params, **_: seen.update(params))  # fmt: skip
    configured = dataclasses.replace(deps.settings, role_arn="arn:aws:iam::123456789012:role/r",
                                     processing_image="processing:latest",
                                     code_uri="s3://tuneloop-test/code/v1")  # fmt: skip
    executors = SageMakerExecutors(client, configured, champion=lambda *_: None, s3=boto3.client("s3"),
                                   failed_datasets=lambda _: [])  # fmt: skip
    stored = deps.service.runs.get(child["run_id"])
    prepare = names.job_name(child["run_id"], "prepare", stage=STAGE)
    command = StartProcessingJob(child["run_id"], "waits", prepare, step="prepare", input_uri=stored.run.dataset_uri)
    with Stubber(client) as stub:
        stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:x"}, {k: ANY for k in (
            "ProcessingJobName", "RoleArn", "AppSpecification", "ProcessingInputs", "ProcessingOutputConfig",
            "ProcessingResources", "StoppingCondition", "Tags")})  # fmt: skip
        outcome = executors.start_processing_job(command, stored.run)
    assert "with the labelled production traffic" in outcome.note
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in seen["ProcessingInputs"]}
    assert inputs["labels"] == "s3://tuneloop-test/labels/waits/"
    assert inputs["capture"] == "s3://tuneloop-test/capture/waits/"
    assert inputs["data"] == "s3://tuneloop-test/datasets/waits/"


def test_what_counts_as_new_data(deps: Any, s3: Any) -> None:
    """Labels count once per inference id, however often sent, and only deliveries received
    in a later second than the run's creation; datasets count by folder, never the run's own."""
    from chalicelib.domain.events import NewData
    from chalicelib.feedback import FeedbackInbox, NewDataCounter

    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="datasets/counted/").get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=o["Key"])
    counter = NewDataCounter(s3, BUCKET)
    created = datetime.now(UTC) - timedelta(minutes=1)
    inbox = FeedbackInbox(s3, BUCKET, lambda: datetime.now(UTC))
    inbox.store("counted", "d1", "test", [{"inference_id": "a", "label": "x"}, {"inference_id": "b", "label": "y"}])
    inbox.store("counted", "d2", "test", [{"inference_id": "a", "label": "z"}])  # a again: one request
    inbox.store("counted", "d3", "test", [], errors=[(1, "label: missing")])  # nothing accepted
    for key in ("ds-1/reviews.jsonl", "ds-2/a.jsonl", "ds-2/b.jsonl", "ds-3/manifest.json"):
        s3.put_object(Bucket=BUCKET, Key=f"datasets/counted/{key}", Body=b"{}\n")
    own = f"s3://{BUCKET}/datasets/counted/ds-1/reviews.jsonl"
    assert counter("counted", created, own) == NewData(labels=2, datasets=2)
    assert counter("counted", created, f"s3://{BUCKET}/datasets/counted/ds-3/manifest.json").datasets == 2
    assert counter("counted", created, f"s3://{BUCKET}/datasets/counted/") == NewData(labels=2, datasets=3)
    later = datetime.now(UTC) + timedelta(seconds=1)  # a run created after all of it
    assert counter("counted", later, own) == NewData(labels=0, datasets=0)
