"""The packaged template as CloudFormation gets it, after the SAM transform: every event
handler has a dead-letter queue and bounded retries, and the S3 rule is scoped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.iam import resolve

REPO = Path(__file__).resolve().parents[2]
EVENT_HANDLERS = ("OnDatasetUploaded", "OnSagemakerEvent", "OnAlarm")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    out = tmp_path_factory.mktemp("package")
    chalice = Path(sys.executable).with_name("chalice")
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    command = [str(chalice), "package", "--stage", "dev", "--merge-template", "infra/resources.json", str(out)]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    # chalicelib/spec.py links to training/spec.py (declared once for Lambda and the jobs):
    # the zip must hold the file itself, not a link.
    with zipfile.ZipFile(out / "deployment.zip") as deployment:
        assert deployment.read("chalicelib/spec.py") == (REPO / "training" / "spec.py").read_bytes()
    sam = json.loads((out / "sam.json").read_text())
    for resource in sam["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":  # as `aws cloudformation package` leaves it
            resource["Properties"]["CodeUri"] = "s3://artifacts/deployment.zip"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return dict(transform(sam, {}, NoManagedPolicies()))


def of_type(template: dict[str, Any], kind: str, **properties: Any) -> dict[str, Any]:
    """The one resource of ``kind`` whose properties include ``properties``."""
    found = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == kind and all(r["Properties"].get(k) == v for k, v in properties.items())
    ]
    assert len(found) == 1, (kind, properties)
    return found[0]


def rule_of(template: dict[str, Any], function: str) -> dict[str, Any]:
    rules = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Events::Rule"
        and r["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
    ]
    assert len(rules) == 1, function
    return rules[0]


@pytest.mark.parametrize("function", EVENT_HANDLERS)
def test_every_event_handler_has_a_dead_letter_queue_and_bounded_retries(
    template: dict[str, Any], function: str
) -> None:
    resources = template["Resources"]
    queue = f"{function}DeadLetterQueue"
    assert resources[queue]["Type"] == "AWS::SQS::Queue"
    assert resources[queue]["Properties"]["SqsManagedSseEnabled"] is True
    # EventBridge could not invoke the function: the rule's target sends the event there.
    target = rule_of(template, function)["Targets"][0]
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue, "Arn"]}}
    assert 0 < target["RetryPolicy"]["MaximumRetryAttempts"] <= 185
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 86400
    # The function threw: Lambda retries its async invoke twice, then sends the event there.
    assert resources[function]["Properties"]["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": [queue, "Arn"]}}
    invoke = of_type(template, "AWS::Lambda::EventInvokeConfig", FunctionName={"Ref": function})
    assert invoke["MaximumRetryAttempts"] == 2 and invoke["MaximumEventAgeInSeconds"] <= 6 * 3600
    # EventBridge may send to the queue; the stack's outputs tell `tuneloop dlq` where it is.
    policy = of_type(template, "AWS::SQS::QueuePolicy", Queues=[{"Ref": queue}])
    assert policy["PolicyDocument"]["Statement"][0]["Principal"] == {"Service": "events.amazonaws.com"}
    assert template["Outputs"][f"{function}DeadLetterQueue"]["Value"] == {"Ref": queue}
    assert template["Outputs"][f"{function}Function"]["Value"] == {"Fn::GetAtt": [function, "Arn"]}


def test_schedules_are_not_retried_over_their_next_tick(template: dict[str, Any]) -> None:
    for function in ("Reconcile", "CheckDrift"):
        invoke = of_type(template, "AWS::Lambda::EventInvokeConfig", FunctionName={"Ref": function})
        assert invoke["MaximumRetryAttempts"] == 0


def test_the_dataset_rule_takes_only_the_data_buckets_drop_prefix(template: dict[str, Any]) -> None:
    import app

    pattern = rule_of(template, "OnDatasetUploaded")["EventPattern"]
    assert pattern["detail"]["bucket"]["name"] == [{"Ref": "DataBucket"}]
    assert pattern["detail"]["object"]["key"] == [{"prefix": app.DATASET_PREFIX}, {"prefix": app.FEEDBACK_PREFIX}]
    # The handler's own prefix setting and the rule's agree.
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    assert config["environment_variables"]["TUNELOOP_DATASET_PREFIX"] == app.DATASET_PREFIX


def test_the_functions_may_send_to_their_dead_letter_queues() -> None:
    for stage in ("dev", "prod"):
        policy = resolve(json.loads((REPO / ".chalice" / f"policy-{stage}.json").read_text()), stage)
        statement = next(s for s in policy["Statement"] if s.get("Sid") == "DeadLetters")
        assert statement["Action"] == ["sqs:SendMessage"]
        assert statement["Resource"] == f"arn:aws:sqs:*:*:tuneloop-{stage}-*-dlq"


def test_access_is_logged_and_every_function_has_a_concurrency_cap(template: dict[str, Any]) -> None:
    """Who called the API and who touched the bucket are on record (issue 11, item 9);
    no function can scale past its stage's cap (a runaway loop is bounded)."""
    resources = template["Resources"]
    bucket = resources["DataBucket"]["Properties"]
    assert bucket["LoggingConfiguration"] == {
        "DestinationBucketName": {"Ref": "AccessLogsBucket"},
        "LogFilePrefix": "data-bucket/",
    }
    logs = resources["AccessLogsBucket"]["Properties"]
    assert logs["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is True
    stages = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::ApiGateway::Stage"]
    assert len(stages) == 1 and stages[0]["TracingEnabled"] is True
    access = stages[0]["AccessLogSetting"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogs", "Arn"]}
    assert {"user", "ip", "httpMethod", "resourcePath", "status"} <= set(json.loads(access["Format"]))
    functions = {n: r["Properties"] for n, r in resources.items() if r["Type"] == "AWS::Lambda::Function"}
    assert len(functions) == 6
    assert all(p.get("ReservedConcurrentExecutions", 0) >= 1 for p in functions.values()), functions.keys()


def test_every_resource_kind_cloudformation_gets_is_honoured_by_the_local_cloud_or_named(
    template: dict[str, Any],
) -> None:
    """The packaged template after the SAM transform: a kind the local cloud neither stands in
    for nor names (with the reason) at `up` fails here, before it can differ unnoticed."""
    from tuneloop.local.template import HONOURED, NOT_HONOURED

    kinds = {r["Type"] for r in template["Resources"].values()}
    unknown = sorted(kinds - set(HONOURED) - set(NOT_HONOURED))
    assert not unknown, f"resource kinds the local cloud neither honours nor names: {unknown}"


def test_the_local_event_router_matches_what_each_rule_of_the_template_matches(template: dict[str, Any]) -> None:
    """Every rule CloudFormation creates is a route of the local router with the same
    pattern (the template's merges included), or a schedule the router runs on its own
    interval: a rule that gains a filter on AWS gains it locally too."""
    import app
    from tuneloop.local import template as local_template
    from tuneloop.local.template import logical_id, resolve_resource, rule_patterns

    bucket = "tuneloop-dev-data"
    patterns = rule_patterns(app.app, local_template.load("dev", bucket))
    schedules = {logical_id(s.name) for s in app.app.event_sources if hasattr(s, "schedule_expression")}
    by_function = {logical_id(name): pattern for name, pattern in patterns.items()}
    for rule in (r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Events::Rule"):
        (target,) = rule["Targets"]
        function = target["Arn"]["Fn::GetAtt"][0]
        if "ScheduleExpression" in rule:
            assert function in schedules, f"{function}'s schedule has no scheduled handler locally"
            continue
        wanted = resolve_resource(rule["EventPattern"], {"DataBucket": bucket})
        assert by_function.get(function) == wanted, f"{function}: the local rule differs from the template's"


def test_every_variable_the_template_gives_a_function_is_set_locally_or_named(template: dict[str, Any]) -> None:
    """A variable only the template sets is how code that passes locally fails on AWS: each
    one is set by the local cloud from the same source, or named with why it is not."""
    from tuneloop.local.template import shared_environment, variable_kept

    shared = shared_environment()
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        variables = resource["Properties"].get("Environment", {}).get("Variables", {})
        unknown = sorted(v for v in variables if variable_kept(v) is None)
        assert not unknown, f"{name}: variables the local cloud neither sets nor names: {unknown}"
        for variable, value in shared.items():
            assert variables.get(variable) == value, f"{name}: {variable} differs from .chalice/config.json's"
