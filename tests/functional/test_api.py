"""The HTTP API through Chalice's test client (store: DynamoDB Local)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.conftest import BEATS_BASELINE, BUCKET, DEMO_CONFIG, DEMO_TUNED_CONFIG, STAGE
from tests.functional.conftest import Api

DATASET = f"s3://{BUCKET}/datasets/demo/ds-1/reviews.jsonl"


def test_create_get_list_projects(api: Api, demo: dict[str, Any]) -> None:
    assert demo["config"]["training"]["volume_size_gb"] == 30  # defaults filled in
    assert api.call("GET", "/projects/demo")[1]["name"] == "demo"
    status, body = api.call("GET", "/projects")
    assert status == 200 and [p["name"] for p in body["projects"]] == ["demo"]
    status, body = api.call("POST", "/projects", {"name": "demo", "config": DEMO_CONFIG})
    assert status == 409 and "already exists" in body["Message"]


def test_update_project(api: Api, demo: dict[str, Any]) -> None:
    config = {**DEMO_CONFIG, "approval": "manual"}
    status, body = api.call("PUT", "/projects/demo", {"config": config})
    assert status == 200 and body["config"]["approval"] == "manual" and body["version"] == 2
    assert api.call("PUT", "/projects/nope", {"config": config})[0] == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "demo", "config": {**DEMO_CONFIG, "task": "poetry"}}, "config.task"),
        (
            {"name": "demo", "config": {**DEMO_CONFIG, "training": {"instance_count": -1}}},
            "config.training.instance_count",
        ),
        ({"name": "Bad Name", "config": DEMO_CONFIG}, "name"),
        ({"name": "demo"}, "config"),
        ({"name": "demo", "config": DEMO_CONFIG, "owner": "me"}, "owner"),
    ],
)
def test_bad_project_bodies_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    status, payload = api.call("POST", "/projects", body)
    assert status == 400
    assert payload["Message"].startswith(f"BadRequestError: {field}:") or payload["Message"].startswith(f"{field}:")


def test_malformed_and_unsupported_bodies(api: Api) -> None:
    status, payload = api.call("POST", "/projects", b"{not json")
    assert status == 400 and "body" in payload["Message"]
    status, payload = api.call("POST", "/projects", [1, 2])
    assert status == 400 and "JSON object" in payload["Message"]
    response = api.client.http.request("POST", "/projects", headers={"Content-Type": "text/plain"}, body=b"x")
    assert response.status_code == 415
    big = {"name": "demo", "config": {**DEMO_CONFIG, "training": {"hyperparameters": {"blob": "x" * 300_000}}}}
    status, payload = api.call("POST", "/projects", big)
    assert status == 413


def test_unknown_route_and_method(api: Api) -> None:
    assert api.call("GET", "/nothing-here")[0] in (403, 404)
    assert api.call("DELETE", "/projects")[0] == 405


def test_start_get_and_list_runs(api: Api, demo: dict[str, Any]) -> None:
    status, run = api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET})
    assert status == 202 and run["state"] == "preparing"
    status, full = api.call("GET", f"/runs/{run['run_id']}")
    assert status == 200
    assert [h["to"] for h in full["history"]] == ["preparing"]
    assert full["pending_commands"][0]["type"] == "StartProcessingJob"
    assert full["awaiting"] == full["pending_commands"][0]["job_name"]
    status, listed = api.call("GET", "/runs?project=demo&state=preparing")
    assert [r["run_id"] for r in listed["runs"]] == [run["run_id"]]
    assert api.call("GET", "/runs/nope")[0] == 404


def test_runs_pagination(api: Api, demo: dict[str, Any]) -> None:
    ids = {api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET})[1]["run_id"] for _ in range(5)}
    seen: set[str] = set()
    token = None
    pages = 0
    while True:
        path = "/runs?project=demo&limit=2" + (f"&next_token={token}" if token else "")
        status, body = api.call("GET", path)
        assert status == 200
        seen |= {r["run_id"] for r in body["runs"]}
        pages += 1
        token = body["next_token"]
        if not token:
            break
    assert seen == ids and pages >= 3


@pytest.mark.parametrize(
    "query,field",
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("state=flying", "state"),
        ("project=Bad_Name", "project"),
        ("next_token=%21%21", "next_token"),
    ],
)
def test_bad_run_queries(api: Api, query: str, field: str) -> None:
    status, body = api.call("GET", f"/runs?{query}")
    assert status == 400 and field in body["Message"]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"project": "demo", "dataset_uri": "s3://elsewhere/data.jsonl"}, "dataset_uri"),
        # Another project's data, or the bucket's other prefixes, are not this project's to train on.
        ({"project": "demo", "dataset_uri": f"s3://{BUCKET}/datasets/other/ds/x.jsonl"}, "dataset_uri"),
        ({"project": "demo", "dataset_uri": f"s3://{BUCKET}/runs/aaaaaaaaaaaa/prepare/train/"}, "dataset_uri"),
        ({"project": "demo", "dataset_uri": f"s3://{BUCKET}/datasets/demo/"}, "dataset_uri"),
        ({"project": "demo"}, "dataset_uri"),
        ({"dataset_uri": DATASET}, "project"),
        ({"project": "demo", "dataset_uri": DATASET, "extra": 1}, "extra"),
    ],
)
def test_bad_run_bodies(api: Api, demo: dict[str, Any], body: dict[str, Any], field: str) -> None:
    status, payload = api.call("POST", "/runs", body)
    assert status == 400 and field in payload["Message"]


def test_run_for_unknown_project(api: Api) -> None:
    assert api.call("POST", "/runs", {"project": "ghost", "dataset_uri": DATASET})[0] == 404


def test_idempotency_key_starts_one_run(api: Api, demo: dict[str, Any]) -> None:
    headers = {"Idempotency-Key": "retry-me"}
    first = api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET}, headers)
    second = api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET}, headers)
    assert first[0] == 202 and second[0] == 200
    assert first[1]["run_id"] == second[1]["run_id"]
    assert len(api.call("GET", "/runs?project=demo")[1]["runs"]) == 1


def test_stop(api: Api, demo: dict[str, Any]) -> None:
    run = api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET})[1]
    status, body = api.call("POST", f"/runs/{run['run_id']}/stop")
    assert status == 202 and body["state"] == "stopped"
    full = api.call("GET", f"/runs/{run['run_id']}")[1]
    kinds = [p["type"] for p in full["pending_commands"]]
    assert "StopJob" in kinds  # stopping the prepare job it had asked for
    assert api.call("POST", f"/runs/{run['run_id']}/stop")[0] == 202  # a retried stop is harmless
    assert api.call("POST", "/runs/nope/stop")[0] == 404
    status, body = api.call("POST", f"/runs/{run['run_id']}/stop", {"stop_serving": "yes"})
    assert status == 400 and "stop_serving: must be true or false" in body["Message"]


def test_a_deployed_run_stops_serving_only_when_asked(api: Api, demo: dict[str, Any], deps: Any) -> None:
    from tests.integration.test_drift_schedule import deployed

    run_id = deployed(deps.service, "demo", DATASET)
    status, body = api.call("POST", f"/runs/{run_id}/stop")
    assert status == 409 and f"serves tl-{STAGE}-demo: stopping it deletes that endpoint" in body["Message"]
    assert api.call("GET", f"/runs/{run_id}")[1]["state"] == "deployed"
    status, body = api.call("POST", f"/runs/{run_id}/stop", {"stop_serving": True, "reason": "retired"})
    assert status == 202 and body["state"] == "stopped"
    full = api.call("GET", f"/runs/{run_id}")[1]
    assert "retired" in full["history"][-1]["reason"]
    assert "DeleteEndpoint" in [p["type"] for p in full["pending_commands"]]


def test_manual_approval_through_the_api(api: Api, deps: Any, s3: Any) -> None:
    from chalicelib.domain import names
    from chalicelib.domain.events import EvaluationLoaded, ModelPackageChanged, ProcessingJobChanged, TrainingJobChanged
    from tests.conftest import T0

    config = {**DEMO_CONFIG, "approval": "manual"}
    assert api.call("POST", "/projects", {"name": "manual", "config": config})[0] == 201
    dataset = DATASET.replace("/datasets/demo/", "/datasets/manual/")
    run_id = api.call("POST", "/runs", {"project": "manual", "dataset_uri": dataset})[1]["run_id"]
    service = deps.service
    assert api.call("POST", f"/runs/{run_id}/approve")[0] == 409  # nothing to approve yet
    steps = [
        ProcessingJobChanged(
            event_id="p", time=T0, job_name=names.job_name(run_id, "prepare", stage=STAGE), status="Completed"
        ),
        TrainingJobChanged(
            event_id="t", time=T0, job_name=names.job_name(run_id, "train", 1, stage=STAGE), status="Completed"
        ),
        ProcessingJobChanged(
            event_id="e", time=T0, job_name=names.job_name(run_id, "evaluate", stage=STAGE), status="Completed"
        ),
        EvaluationLoaded(event_id="l", time=T0, run_id=run_id, metrics={"macro_f1": 0.9}, baseline=BEATS_BASELINE),
        ModelPackageChanged(
            event_id="m1",
            time=T0,
            run_id=run_id,
            package_arn="arn:aws:sagemaker:us-east-1:1:model-package/tl-manual/1",
            approval_status="PendingManualApproval",
        ),
    ]
    for event in steps:
        service.handle(event)
    run = api.call("GET", f"/runs/{run_id}")[1]
    assert run["state"] == "pending_approval"
    # Told, not left to look: the notice names the run and the next command.
    [notice] = [n for n in api.call("GET", "/notices")[1]["notices"] if n["run_id"] == run_id]
    assert (
        notice["kind"] == "waiting_for_approval"
        and notice["next"] == f"tuneloop run approve {run_id} --stage {STAGE} (or reject {run_id})"
    )
    assert f"run {run_id} of project manual passed its gate and waits for a person" in notice["message"]
    status, body = api.call("POST", f"/runs/{run_id}/approve", {"reason": "looks good"})
    assert status == 202 and body["decision"] == "approved"
    pending = api.call("GET", f"/runs/{run_id}")[1]["pending_commands"]
    assert pending[-1]["type"] == "UpdateModelPackageApproval" and pending[-1]["package_arn"].endswith("/tl-manual/1")
    assert api.call("POST", f"/runs/{run_id}/approve")[0] == 202  # a retried approval is harmless
    assert api.call("POST", f"/runs/{run_id}/reject", {"reason": 7})[0] == 400
    # Free text is kept in the run's history: bounded, so no request can push the run's item
    # toward DynamoDB's 400 KB (which would stop every later transition).
    for verb in ("approve", "reject", "retrain"):
        status, body = api.call("POST", f"/runs/{run_id}/{verb}", {"reason": "x" * 1001})
        assert status == 400 and "reason: must be at most 1000 characters, got 1001" in body["Message"], verb
    # SageMaker reports the approval: the run moves on to deployment.
    service.handle(
        ModelPackageChanged(
            event_id="m2", time=T0, run_id=run_id, package_arn=pending[-1]["package_arn"], approval_status="Approved"
        )
    )
    service.handle(
        ModelPackageChanged(
            event_id="m3", time=T0, run_id=run_id, package_arn=pending[-1]["package_arn"], approval_status="Approved"
        )
    )
    run = api.call("GET", f"/runs/{run_id}")[1]
    assert run["state"] == "deploying" and [h["to"] for h in run["history"]].count("deploying") == 1
    # Once the run has moved on, approving it again is a conflict (the README's 409), not an echo.
    status, body = api.call("POST", f"/runs/{run_id}/approve")
    assert status == 409 and "is deploying, not waiting for approval" in body["Message"]


def test_an_unknown_hyperparameter_is_a_400_naming_the_nearest_valid_one(api: Api) -> None:
    config = {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "task": "text-classification",
              "training": {"hyperparameters": {"num_train_epochs": 1}}}  # fmt: skip
    status, body = api.call("POST", "/projects", {"name": "typo", "config": config})
    assert status == 400
    assert body["Message"].startswith("config.training.hyperparameters.num_train_epochs: is not a hyperparameter")
    assert "did you mean 'epochs'?" in body["Message"]
    # The effective hyperparameters, train.py's defaults included, are what a project shows.
    config["training"]["hyperparameters"] = {"epochs": 1}
    assert api.call("POST", "/projects", {"name": "typo", "config": config})[0] == 201
    shown = api.call("GET", "/projects/typo")[1]["config"]["training"]["hyperparameters"]
    assert shown["epochs"] == 1 and shown["learning_rate"] == "auto" and shown["max_length"] == 256


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b'{"name": "x", "config": {"gates": {"metrics": {"macro_f1": NaN}}}}', "NaN is not a number JSON allows"),
        (b'{"name": "x", "config": {"gates": {"metrics": {"macro_f1": 1e999}}}}', "1e999 is too large"),
        (b'{"name": "x", "config": ' + b"[" * 3000 + b"]" * 3000 + b"}", "is JSON tuneloop does not take"),
        (b'{"name": "x", "config": {"training": {"max_runtime_s": ' + b"9" * 5000 + b"}}}", "does not take"),
    ],
)
def test_hostile_json_bodies_are_400s_not_500s(api: Api, raw: bytes, reason: str) -> None:
    status, body = api.call("POST", "/projects", raw)
    assert status == 400 and body["Message"].startswith("body: ") and reason in body["Message"]


def _token(key: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "path,key",
    [
        ("/runs?project=demo", {"x": 1}),  # not a key at all
        ("/runs?project=demo", {"run_id": {"N": "1"}}),  # not a string attribute
        ("/runs?project=demo", {"run_id": {"S": "aaaaaaaaaaaa"}}),  # the table's key, not the index's
        ("/runs?state=deployed", {"name": {"S": "demo"}}),  # another listing's key
        # The right shape, but another project's place: a token continues only its own listing.
        ("/runs?project=demo", {"run_id": {"S": "a"}, "project": {"S": "other"}, "created_at": {"S": "x"}}),
        ("/projects", {"run_id": {"S": "aaaaaaaaaaaa"}, "project": {"S": "demo"}}),
        ("/runs", [1, 2]),
    ],
)
def test_a_forged_page_token_is_a_400_naming_it(api: Api, demo: dict[str, Any], path: str, key: object) -> None:
    joiner = "&" if "?" in path else "?"
    status, body = api.call("GET", f"{path}{joiner}next_token={_token(key)}")
    assert status == 400 and body["Message"].startswith("next_token"), body


def test_who_asked_is_recorded_with_what_they_asked(api: Api, deps: Any) -> None:
    """The audit trail: history entries a request caused, and a project's last change,
    name the caller (the IAM principal on AWS; here the test stage's fallback)."""
    from chalice.app import Request

    import app as app_module

    assert api.call("POST", "/projects", {"name": "audit", "config": DEMO_CONFIG})[0] == 201
    dataset = DATASET.replace("/datasets/demo/", "/datasets/audit/")
    run = api.call("POST", "/runs", {"project": "audit", "dataset_uri": dataset})[1]
    assert api.call("POST", f"/runs/{run['run_id']}/stop")[0] == 202
    history = api.call("GET", f"/runs/{run['run_id']}")[1]["history"]
    expected = "local" if deps.settings.stage == "local" else "unidentified caller"
    assert [h["actor"] for h in history] == [expected, expected]
    assert api.call("GET", "/projects/audit")[1]["updated_by"] == expected
    # On AWS, API Gateway's IAM authorizer puts the verified principal in the context.
    arn = "arn:aws:iam::123456789012:user/alice"
    app_module.app.current_request = Request(
        {
            "multiValueQueryStringParameters": None,
            "headers": {},
            "pathParameters": {},
            "requestContext": {"httpMethod": "POST", "resourcePath": "/runs", "identity": {"userArn": arn}},
            "body": None,
            "isBase64Encoded": False,
            "stageVariables": None,
        }
    )
    assert app_module._caller() == arn


def test_a_config_over_the_stages_limits_is_a_400_and_a_run_of_one_too(api: Api, deps: Any) -> None:
    """The stage's limits at config time; a project saved before a limit tightened cannot
    start a run over it either."""
    from chalicelib.domain.limits import Limits
    from tests.conftest import DEMO_CONFIG

    deps.service.limits = Limits(stage="dev", instance_types=("ml.m5.*", "ml.g5.xlarge"), max_instance_count=2)
    big = {**DEMO_CONFIG, "training": {**DEMO_CONFIG["training"], "instance_type": "ml.p5.48xlarge"}}
    status, body = api.call("POST", "/projects", {"name": "big", "config": big})
    assert status == 400
    assert body["Message"] == (
        "config.training.instance_type: 'ml.p5.48xlarge' is not allowed on stage dev (allowed: ml.m5.*, ml.g5.xlarge)"
    )
    many = {**DEMO_CONFIG, "training": {**DEMO_CONFIG["training"], "instance_count": 2}}
    assert api.call("POST", "/projects", {"name": "many", "config": many})[0] == 201
    deps.service.limits = Limits(stage="dev", max_instance_count=1)  # tightened since
    dataset = f"s3://{deps.settings.bucket}/datasets/many/ds/reviews.jsonl"
    status, body = api.call("POST", "/runs", {"project": "many", "dataset_uri": dataset})
    assert status == 400 and "training.instance_count: 2 is over stage dev's limit of 1" in body["Message"]
    # An s3:// base model must be where the jobs' role reads base models.
    elsewhere = {**DEMO_CONFIG, "base_model": "s3://someone-elses-bucket/model.tar.gz"}
    status, body = api.call("POST", "/projects", {"name": "elsewhere", "config": elsewhere})
    assert status == 400 and body["Message"].startswith("config.base_model: an s3:// base model must be under")


def test_a_config_too_large_to_copy_into_every_run_is_a_400(api: Api) -> None:
    """Every run keeps a snapshot of its project's config in its item."""
    rates = [f"{1e-5 + n * 1e-9:.9f}" for n in range(3000)]  # 3,000 valid values of one categorical range
    ranges = {"learning_rate": {"type": "categorical", "values": rates}}
    big = {**DEMO_TUNED_CONFIG, "tuning": {**DEMO_TUNED_CONFIG["tuning"], "ranges": ranges}}
    status, body = api.call("POST", "/projects", {"name": "big", "config": big})
    assert status == 400 and "config: is" in body["Message"] and "at most 32768" in body["Message"], body
    # The generation settings have a tighter limit: the jobs get them as container arguments.
    big = {**DEMO_CONFIG, "generation": {"regex": "a" * 40_000}}
    status, body = api.call("POST", "/projects", {"name": "big", "config": big})
    assert status == 400 and "config.generation: is" in body["Message"] and "at most 8000" in body["Message"], body


def test_a_project_reads_only_its_own_inputs(api: Api, deps: Any) -> None:
    """A base model is one shared under models/ or a model of the project's own runs; batch
    inputs are under batch/<project>/: through its config, project A cannot make SageMaker
    read project B's data or models."""
    assert api.call("POST", "/projects", {"name": "other", "config": DEMO_CONFIG})[0] == 201
    theirs = api.call("POST", "/runs", {"project": "other", "dataset_uri": f"s3://{BUCKET}/datasets/other/x.jsonl"})
    their_model = f"s3://{BUCKET}/runs/{theirs[1]['run_id']}/train/output/model.tar.gz"
    for config, field, needle in [
        ({**DEMO_CONFIG, "base_model": their_model}, "config.base_model", "of project 'other'"),
        ({**DEMO_CONFIG, "base_model": f"s3://{BUCKET}/runs/aaaaaaaaaaaa/model.tar.gz"}, "config.base_model",
         "that no project has"),
        ({**DEMO_CONFIG, "base_model": f"s3://{BUCKET}/models/../runs/x/model.tar.gz"}, "config.base_model", ".."),
        ({**DEMO_CONFIG, "base_model": f"s3://{BUCKET}/datasets/other/model.tar.gz"}, "config.base_model",
         "must be under"),
        ({**DEMO_CONFIG, "deployment": {"mode": "batch", "batch_input_uri": f"s3://{BUCKET}/batch/other/"}},
         "config.deployment.batch_input_uri", f"s3://{BUCKET}/batch/mine/"),
        ({**DEMO_CONFIG, "deployment": {"mode": "batch", "batch_input_uri": f"s3://{BUCKET}/datasets/other/"}},
         "config.deployment.batch_input_uri", "the project's own batch inputs"),
    ]:  # fmt: skip
        status, body = api.call("POST", "/projects", {"name": "mine", "config": config})
        assert status == 400 and body["Message"].startswith(f"{field}:") and needle in body["Message"], body
    shared = {**DEMO_CONFIG, "base_model": f"s3://{BUCKET}/models/minilm/model.tar.gz",
              "deployment": {"mode": "batch", "batch_input_uri": f"s3://{BUCKET}/batch/mine/2026-12/"}}  # fmt: skip
    assert api.call("POST", "/projects", {"name": "mine", "config": shared})[0] == 201
    ours = api.call("POST", "/runs", {"project": "mine", "dataset_uri": f"s3://{BUCKET}/datasets/mine/x.jsonl"})
    own_model = f"s3://{BUCKET}/runs/{ours[1]['run_id']}/train/output/model.tar.gz"
    assert api.call("PUT", "/projects/mine", {"config": {**shared, "base_model": own_model}})[0] == 200


def test_deleting_a_project_deletes_what_its_runs_made(api: Api, deps: Any) -> None:
    """Serving stops, and the endpoint, its scaling, every run's configs, models and alarms
    go; registered versions are kept unless asked; the runs stay as history."""
    import dataclasses

    import boto3
    from botocore.stub import Stubber

    from chalicelib import deps as deps_module
    from chalicelib.deployment import monitoring_alarm_requests
    from chalicelib.teardown import ProjectTeardown
    from tests.integration.test_drift_schedule import deployed

    assert api.call("POST", "/projects", {"name": "gone", "config": DEMO_CONFIG})[0] == 201
    run_id = deployed(deps.service, "gone", DATASET.replace("/datasets/demo/", "/datasets/gone/"))
    cloudwatch = boto3.client("cloudwatch")
    for alarm in monitoring_alarm_requests(deps.service.runs.get(run_id).run):
        cloudwatch.put_metric_alarm(**alarm)
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    endpoint = f"tl-{STAGE}-gone"
    with Stubber(sagemaker) as sm, Stubber(scaling) as sc:
        variant = f"endpoint/{endpoint}/variant/AllTraffic"
        target = {"ServiceNamespace": "sagemaker", "ResourceId": variant,
                  "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}  # fmt: skip
        sc.add_response("describe_scalable_targets", {"ScalableTargets": [{
            **target, "MinCapacity": 1, "MaxCapacity": 2, "RoleARN": "arn:aws:iam::1:role/x",
            "CreationTime": "2026-12-06T00:00:00Z"}]}, {**{k: v for k, v in target.items() if k != "ResourceId"},
                                                        "ResourceIds": [variant]})  # fmt: skip
        sc.add_response("deregister_scalable_target", {}, target)
        sm.add_response("delete_endpoint", {}, {"EndpointName": endpoint})
        sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": f"tl-{STAGE}-{run_id}-config-1"})
        sm.add_response("delete_model", {}, {"ModelName": f"tl-{STAGE}-{run_id}-model-1"})
        package = f"arn:aws:sagemaker:us-east-1:1:model-package/{endpoint}/1"
        sm.add_response("list_model_packages", {"ModelPackageSummaryList": [{
            "ModelPackageGroupName": endpoint, "ModelPackageArn": package, "CreationTime": "2026-12-06T00:00:00Z",
            "ModelPackageStatus": "Completed"}]}, {"ModelPackageGroupName": endpoint})  # fmt: skip
        deps_module.override(dataclasses.replace(deps, teardown=ProjectTeardown(sagemaker, cloudwatch, scaling, STAGE)))
        try:
            status, result = api.call("DELETE", "/projects/gone")
        finally:
            deps_module.override(deps)
        sm.assert_no_pending_responses()
    assert status == 200, result
    assert result["deleted"]["endpoints"] == [endpoint] and result["deleted"]["scaling_targets"] == [variant]
    assert result["deleted"]["endpoint_configs"] == [f"tl-{STAGE}-{run_id}-config-1"]
    assert sorted(result["deleted"]["alarms"]) == sorted(a["AlarmName"] for a in monitoring_alarm_requests(
        deps.service.runs.get(run_id).run))  # fmt: skip
    assert result["kept"] == {"model_packages": [package], "runs": [run_id]}
    assert not cloudwatch.describe_alarms(AlarmNamePrefix=f"tl-{STAGE}-{run_id}-")["MetricAlarms"]
    assert api.call("GET", "/projects/gone")[0] == 404
    assert api.call("GET", f"/runs/{run_id}")[1]["state"] == "stopped"
    assert api.call("DELETE", "/projects/gone")[0] == 404
    # A project that never scaled has no target: nothing is deregistered (a call AWS would
    # deny, since the policy reads the target's stage tag).
    assert api.call("POST", "/projects", {"name": "never", "config": DEMO_CONFIG})[0] == 201
    with Stubber(sagemaker) as sm, Stubber(scaling) as sc:
        sc.add_response("describe_scalable_targets", {"ScalableTargets": []})
        sm.add_client_error("delete_endpoint", "ValidationException", "Could not find endpoint")
        sm.add_response("list_model_packages", {"ModelPackageSummaryList": []})
        deps_module.override(dataclasses.replace(deps, teardown=ProjectTeardown(sagemaker, cloudwatch, scaling, STAGE)))
        try:
            status, result = api.call("DELETE", "/projects/never")
        finally:
            deps_module.override(deps)
        sc.assert_no_pending_responses()
    assert status == 200 and result["deleted"] == {}, result


def test_a_project_with_runs_on_their_way_is_not_deleted(api: Api, demo: dict[str, Any]) -> None:
    run = api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET})[1]
    status, body = api.call("DELETE", "/projects/demo")
    assert status == 409 and f"{run['run_id']} (preparing); stop or reject them first" in body["Message"]
    status, body = api.call("DELETE", "/projects/demo?delete_models=yes")
    assert status == 400 and "delete_models: must be true or false" in body["Message"]
    assert api.call("GET", "/projects/demo")[0] == 200


def test_runs_on_their_way_are_capped_per_project_and_per_stage(
    api: Api, demo: dict[str, Any], deps: Any, s3: Any
) -> None:
    from chalicelib.domain.limits import Limits
    from tests.functional.test_handlers import drop_event

    deps.service.limits = Limits(stage="dev", max_active_runs_per_project=1, max_active_runs=2)
    assert api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET})[0] == 202
    status, body = api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET.replace("ds-1", "ds-2")})
    assert status == 409 and "project demo has 1 runs on their way" in body["Message"]
    assert "stage dev allows 1 per project (TUNELOOP_LIMIT_MAX_ACTIVE_RUNS_PER_PROJECT)" in body["Message"]
    assert api.call("POST", "/projects", {"name": "other", "config": DEMO_CONFIG})[0] == 201
    other = DATASET.replace("/datasets/demo/", "/datasets/other/")
    assert api.call("POST", "/runs", {"project": "other", "dataset_uri": other})[0] == 202
    assert api.call("POST", "/projects", {"name": "third", "config": DEMO_CONFIG})[0] == 201
    third = DATASET.replace("/datasets/demo/", "/datasets/third/")
    status, body = api.call("POST", "/runs", {"project": "third", "dataset_uri": third})
    assert status == 409 and "stage dev has 2 runs on their way; it allows 2" in body["Message"]
    assert len(api.call("GET", "/runs?limit=10")[1]["runs"]) == 2
    # A dataset dropped past the limit starts nothing, and its uploader can see why.
    assert "runs on their way" in api.invoke("on_dataset_uploaded", drop_event("datasets/demo/ds-9/x.jsonl"))["ignored"]
    [refused] = api.call("GET", "/drops")[1]["refused"]
    assert refused["key"] == "datasets/demo/ds-9/x.jsonl" and "TUNELOOP_LIMIT_MAX_ACTIVE_RUNS_PER_PROJECT" in refused[
        "reason"]  # fmt: skip


def test_a_notice_is_published_to_the_stages_topic() -> None:
    """What SNS gets (the request checked against its model): subject, the message with
    the next command, the kind as an attribute for subscription filters."""
    import boto3
    from botocore.stub import Stubber

    from chalicelib.domain.events import CommandFailed
    from chalicelib.domain.machine import decide
    from chalicelib.domain.states import RunState
    from chalicelib.notices import Notices
    from tests.conftest import T0
    from tests.unit.test_machine import make_run

    sns = boto3.client("sns", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    topic = "arn:aws:sns:us-east-1:123456789012:tuneloop-dev-notices"
    run = make_run(RunState.TRAINING)
    event = CommandFailed(event_id="f1", time=T0, run_id=run.run_id, command="StartTrainingJob",
                          error="ResourceLimitExceeded: no ml.g5.xlarge quota")  # fmt: skip
    decision = decide(run, event)
    with Stubber(s3) as s3_stub, Stubber(sns) as sns_stub:
        s3_stub.add_response("put_object", {}, None)
        sns_stub.add_response("publish", {"MessageId": "m"}, {
            "TopicArn": topic, "Subject": f"tuneloop: run {run.run_id} of project demo failed",
            "Message": f"run {run.run_id} of project demo failed: {decision.note}\n\n"
                       f"Next: tuneloop run show {run.run_id}\n",
            "MessageAttributes": {"kind": {"DataType": "String", "StringValue": "failed"}}})  # fmt: skip
        Notices(s3, "b", sns, topic, lambda: T0).tell(decision, event)
        sns_stub.assert_no_pending_responses()


def test_past_the_monthly_budget_new_runs_are_refused_with_the_figures(
    api: Api, demo: dict[str, Any], deps: Any, s3: Any
) -> None:
    """The month's spend at list prices (each run's cost lines), summed over the projects;
    past the budget a new run is a 409 that says how much of what, and one notice is made."""
    import dataclasses

    from chalicelib import deps as deps_module
    from chalicelib.budget import StageBudget
    from chalicelib.notices import Notices

    def cost_of(run: Any) -> dict[str, Any]:
        return {"total_usd": 6.0, "complete": True}

    notices = Notices(s3, BUCKET, None, "", deps.service.clock, STAGE)
    budget = StageBudget(deps.service, cost_of, "us-east-1", STAGE, 10, deps.service.clock,
                         crossed=notices.tell_budget, ttl_s=0)  # fmt: skip
    deps.service.budget = budget.refusal
    deps_module.override(dataclasses.replace(deps, budget=budget, notices=notices))
    try:
        assert api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET})[0] == 202  # $6 spent
        assert api.call("POST", "/runs", {"project": "demo", "dataset_uri": DATASET.replace("ds-1", "ds-2")})[0] == 202
        spend = api.call("GET", "/spend")[1]
        assert spend["usd"] is not None
        assert (spend["usd"], spend["budget_usd"], spend["projects"], spend["complete"]) == (12.0, 10, 1, True)
        for n in (3, 4):
            status, body = api.call(
                "POST", "/runs", {"project": "demo", "dataset_uri": DATASET.replace("ds-1", f"ds-{n}")}
            )
            assert status == 409, body
            assert f"stage {STAGE} has spent $12.00 of its $10 budget for {spend['month']}" in body["Message"]
        budget_notices = [n for n in api.call("GET", "/notices")[1]["notices"] if n["kind"] == "budget_spent"]
        assert len(budget_notices) == 1 and budget_notices[0]["next"] == f"tuneloop status --stage {STAGE}"
    finally:
        deps_module.override(deps)
    # Where SageMaker is not configured there is no spend to read: said, not an error.
    unread = api.call("GET", "/spend")
    assert unread[0] == 200 and unread[1]["usd"] is None and "not configured" in unread[1]["unavailable"]
