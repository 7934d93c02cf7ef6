"""The local cloud's IAM check: requests as botocore puts them on the wire, placed and
decided under the template's policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from tuneloop.local import sigv4
from tuneloop.local.enforce import EXECUTION_ROLE_FILE, Enforcer, function_principal, request_call, unused_statements
from tuneloop.local.gateway import check_body

KEYS = sigv4.Credentials("TLOCAAAAAAAAAAAAAAAA", "s3cret")
BUCKET = "tuneloop-local-data"
ROLE = "arn:aws:iam::123456789012:role/tuneloop-local-sagemaker-execution"


class _Raw:
    def stream(self, **_: Any) -> Any:
        yield b""


def wire(service: str, operation: str, params: dict[str, Any], keys: sigv4.Credentials = KEYS) -> tuple[Any, ...]:
    """What botocore sends for one call: (signing name, method, target, headers, body)."""
    client = boto3.client(service, region_name="us-east-1", endpoint_url="http://127.0.0.1:4566",
                          aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key)  # fmt: skip
    sent: list[Any] = []

    def capture(request: Any, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 599, {}, _Raw())  # the client gives up: what was sent is all we need

    client.meta.events.register("before-send", capture)
    client.meta.config.retries = {"max_attempts": 0}
    try:
        getattr(client, _snake(client, operation))(**params)
    except Exception:
        pass
    request = sent[0]
    parts = urlsplit(request.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {k.lower(): [v.decode() if isinstance(v, bytes) else v] for k, v in request.headers.items()}
    headers.setdefault("host", [parts.netloc])
    body = request.body or b""
    body = body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else body.read()
    return client.meta.service_model.signing_name, request.method, target, headers, body


def _snake(client: Any, operation: str) -> str:
    return next(name for name, op in client.meta.method_to_api_mapping.items() if op == operation)


CALLS = [
    ("s3", "PutObject", {"Bucket": BUCKET, "Key": "runs/a b/m.tar.gz", "Body": b"x"}, {"Key": "runs/a b/m.tar.gz"}),
    ("s3", "GetObject", {"Bucket": BUCKET, "Key": "datasets/d/x+y.jsonl"}, {"Key": "datasets/d/x+y.jsonl"}),
    ("s3", "HeadObject", {"Bucket": BUCKET, "Key": "k"}, {"Key": "k"}),
    ("s3", "ListObjectsV2", {"Bucket": BUCKET, "Prefix": "runs/"}, {"Prefix": "runs/"}),
    ("s3", "DeleteObjects", {"Bucket": BUCKET, "Delete": {"Objects": [{"Key": "a"}, {"Key": "b"}]}},
     {"Delete": {"Objects": [{"Key": "a"}, {"Key": "b"}]}}),
    ("s3", "CopyObject", {"Bucket": BUCKET, "Key": "b", "CopySource": f"{BUCKET}/a"}, {"CopySource": f"{BUCKET}/a"}),
    ("s3", "CreateMultipartUpload", {"Bucket": BUCKET, "Key": "k"}, {"Key": "k"}),
    ("s3", "PutBucketNotificationConfiguration",
     {"Bucket": BUCKET, "NotificationConfiguration": {"EventBridgeConfiguration": {}}}, {}),
    ("dynamodb", "GetItem", {"TableName": "tuneloop-local-runs", "Key": {"run_id": {"S": "r"}}},
     {"TableName": "tuneloop-local-runs"}),
    ("sagemaker", "CreateTrainingJob", {"TrainingJobName": "tl-local-j", "RoleArn": ROLE,
     "AlgorithmSpecification": {"TrainingImage": "i", "TrainingInputMode": "File"},
     "OutputDataConfig": {"S3OutputPath": "s3://b/o"}, "ResourceConfig": {"InstanceType": "ml.m5.large",
     "InstanceCount": 1, "VolumeSizeInGB": 1}, "StoppingCondition": {"MaxRuntimeInSeconds": 60}},
     {"TrainingJobName": "tl-local-j"}),
    ("sagemaker-runtime", "InvokeEndpoint", {"EndpointName": "tl-local-demo", "Body": b"{}"},
     {"EndpointName": "tl-local-demo"}),
    ("cloudwatch", "PutMetricAlarm", {"AlarmName": "tl-local-a", "EvaluationPeriods": 1, "ComparisonOperator":
     "GreaterThanThreshold", "Threshold": 1.0, "MetricName": "m", "Namespace": "n", "Period": 60,
     "Statistic": "Average"}, {"AlarmName": "tl-local-a"}),
    ("events", "PutEvents", {"Entries": [{"Source": "tuneloop", "DetailType": "x", "Detail": "{}"}]}, {}),
    ("sqs", "SendMessage", {"QueueUrl": "http://127.0.0.1:4566/123456789012/q", "MessageBody": "m"}, {}),
    ("application-autoscaling", "DescribeScalableTargets", {"ServiceNamespace": "sagemaker"}, {}),
]  # fmt: skip


@pytest.mark.parametrize("service,operation,params,expected", CALLS, ids=[f"{c[0]}.{c[1]}" for c in CALLS])
def test_each_request_is_placed_as_the_operation_botocore_sent(
    service: str, operation: str, params: dict[str, Any], expected: dict[str, Any]
) -> None:
    signing, method, target, headers, body = wire(service, operation, params)
    placed = request_call(signing, method, target, headers, body)
    assert not isinstance(placed, str), placed
    assert placed[0] == operation
    assert expected.items() <= placed[1].items()


@pytest.fixture(scope="module")
def enforcer() -> Enforcer:
    return Enforcer.for_stack("local", BUCKET)


def refused(enforcer: Enforcer, principal: str, service: str, operation: str, params: dict[str, Any]) -> Any:
    keys = KEYS.principal(principal) if principal else KEYS
    _, method, target, headers, body = wire(service, operation, params, keys)
    return check_body(method, target, headers, body, KEYS, headers.get("x-amz-target") is not None, enforcer)


def test_a_call_the_principals_policy_does_not_allow_is_access_denied_naming_action_and_resource(
    enforcer: Enforcer,
) -> None:
    write = ("s3", "PutObject", {"Bucket": BUCKET, "Key": "runs/r/output/model.tar.gz", "Body": b"x"})
    code = ("s3", "PutObject", {"Bucket": BUCKET, "Key": "code/training.tar.gz", "Body": b"x"})
    assert refused(enforcer, sigv4.EXECUTION_ROLE, *write) is None
    denied = refused(enforcer, sigv4.EXECUTION_ROLE, *code)
    assert denied is not None and (denied.status, denied.code) == (403, "AccessDenied")
    assert "assumed-role/tuneloop-local-sagemaker-execution/" in denied.message
    assert f"s3:PutObject on resource: arn:aws:s3:::{BUCKET}/code/training.tar.gz" in denied.message
    assert refused(enforcer, "", *code) is None  # the cloud's own key: the operator's
    scan = ("dynamodb", "DeleteTable", {"TableName": "tuneloop-local-runs"})
    denied = refused(enforcer, function_principal("api_handler"), *scan)
    assert denied is not None and (denied.status, denied.code) == (400, "AccessDeniedException")
    assert "dynamodb:DeleteTable on resource: arn:aws:dynamodb:us-east-1:123456789012:table/tuneloop-local-runs" in (
        denied.message
    )
    unknown = refused(enforcer, "role/someone-else", *write)
    assert unknown is not None and "no policy for this principal" in unknown.message


def test_a_policy_folder_takes_one_permission_away(tmp_path: Path) -> None:
    name = "policy-dev.json"
    source = Path(".chalice") / name
    assert source.is_file(), "the functions' policy file moved: update this test"
    document = json.loads(source.read_text())
    for statement in document["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statement["Action"] = [a for a in actions if a != "sagemaker:CreateTrainingJob"] or ["sagemaker:ListTags"]
    (tmp_path / name).write_text(json.dumps(document))
    env = {"TUNELOOP_LOCAL_POLICY_DIR": str(tmp_path), "TUNELOOP_BUCKET": BUCKET, "TUNELOOP_STAGE": "local"}
    taken = Enforcer.from_env(env)
    assert taken is not None and Enforcer.from_env({"TUNELOOP_LOCAL_IAM": "off"}) is None
    params = {
        "TrainingJobName": "tl-local-aaaaaaaaaaaa-train-1",
        "RoleArn": ROLE,
        "ResourceConfig": {"InstanceType": "ml.m5.large"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }
    full = Enforcer.for_stack("local", BUCKET)
    handler = function_principal("on_sagemaker_event")
    assert full.check(handler, "sagemaker", "CreateTrainingJob", params) is None
    denial = taken.check(handler, "sagemaker", "CreateTrainingJob", params)
    assert denial is not None and denial.action == "sagemaker:CreateTrainingJob"
    assert denial.resource.endswith(":training-job/tl-local-aaaaaaaaaaaa-train-1")


def test_a_delete_whose_keys_hide_behind_markup_declarations_is_refused(enforcer: Enforcer) -> None:
    """The keys decided must be the keys moto deletes: a body with a DTD, entity, CDATA or
    comment names none, so the request cannot be placed and is refused."""
    plain = b"<Delete><Object><Key>capture/demo/a.jsonl</Key></Object><Object><Key>x&amp;y</Key></Object></Delete>"
    placed = request_call("s3", "POST", f"/{BUCKET}?delete", {}, plain)
    assert placed == ("DeleteObjects", {"Bucket": BUCKET, "Delete": {"Objects": [
        {"Key": "capture/demo/a.jsonl"}, {"Key": "x&y"}]}})  # fmt: skip
    hidden = b'<!DOCTYPE d [<!ENTITY k "code/training.tar.gz">]><Delete><Object><Key>&k;</Key></Object></Delete>'
    placed = request_call("s3", "POST", f"/{BUCKET}?delete", {}, hidden)
    assert placed == ("DeleteObjects", {"Bucket": BUCKET, "Delete": {"Objects": []}})
    assert enforcer.check(function_principal("api_handler"), "s3", *placed) is not None


def test_the_statements_no_call_needed_are_listed_per_policy(tmp_path: Path) -> None:
    enforcer = Enforcer.for_stack("local", BUCKET)
    write = {"Bucket": BUCKET, "Key": "runs/r/output/model.tar.gz"}
    assert enforcer.check(sigv4.EXECUTION_ROLE, "s3", "PutObject", write) is None
    enforcer.save_usage({"TUNELOOP_LOCAL_POLICY_USAGE": str(tmp_path / "usage")})
    unused = unused_statements(Enforcer.for_stack("local", BUCKET), tmp_path / "usage")
    assert "WriteOutputs" not in unused[EXECUTION_ROLE_FILE]
    assert {"ReadInputs", "DataList"} <= set(unused[EXECUTION_ROLE_FILE])
    assert "policy-dev.json" in unused  # the functions' policies: no call of theirs was made here


def signed_request(keys: sigv4.Credentials, service: str, method: str, target: str, body: bytes,
                   headers: dict[str, str]) -> tuple[str, str, dict[str, list[str]], bytes]:  # fmt: skip
    """A request as an attacker holding ``keys`` can sign it: any headers, query and body."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    auth = (S3SigV4Auth if service == "s3" else SigV4Auth)(BotoCredentials(keys.access_key, keys.secret_key),
                                                           service, "us-east-1")  # fmt: skip
    request = AWSRequest(method=method, url=f"http://127.0.0.1:4566{target}", data=body, headers=headers)
    auth.add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    sent = {k.lower(): [v.decode() if isinstance(v, bytes) else v] for k, v in prepared.headers.items()}
    sent.setdefault("host", [parts.netloc])
    return method, parts.path + (f"?{parts.query}" if parts.query else ""), sent, body


JSON = {"Content-Type": "application/x-amz-json-1.0"}
RUNS = b'{"TableName": "tuneloop-local-runs"}'
ROLE_KEY = sigv4.EXECUTION_ROLE
ATTACKS = [
    # S3 read as the JSON protocol's operation: moto's S3 ignores X-Amz-Target and copies onto code/.
    (ROLE_KEY, "s3", "PUT", f"/{BUCKET}/code/train.py", json.dumps({"Bucket": BUCKET, "Key": "runs/x"}).encode(),
     {"X-Amz-Target": "a.PutObject", "x-amz-copy-source": f"/{BUCKET}/runs/payload"}),
    # moto's JSON services take a query's Action over X-Amz-Target.
    (ROLE_KEY, "monitoring", "POST", "/?Action=DeleteAlarms",
     b'{"Namespace": "tuneloop", "AlarmNames": ["tl-local-x"]}',
     {**JSON, "X-Amz-Target": "GraniteServiceVersion20100801.PutMetricData"}),
    # A field beside the real ones naming the resource the check decides on.
    ("function/on_alarm", "dynamodb", "POST", "/", json.dumps({"TableName": "other", "Whatever":
     "arn:aws:dynamodb:us-east-1:123456789012:table/tuneloop-local-runs"}).encode(),
     {**JSON, "X-Amz-Target": "DynamoDB_20120810.Scan"}),
    # The SageMaker server routes an invocation by its path.
    ("function/api_handler", "sagemaker", "POST", "/endpoints/victim/invocations", b'{"EndpointName": "tl-local-x"}',
     {**JSON, "X-Amz-Target": "SageMaker.DescribeEndpoint"}),
    # The check and moto reading different values of a repeated query parameter.
    (ROLE_KEY, "s3", "GET", f"/{BUCKET}?list-type=2&prefix=&prefix=runs/", b"", {}),
    # A sub-resource of an object the check would read as the object itself.
    (ROLE_KEY, "s3", "PUT", f"/{BUCKET}/runs/r/x?acl", b"", {}),
    ("function/api_handler", "s3", "GET", f"/{BUCKET}?website", b"", {}),
    # A target of another service, or of no operation.
    ("function/on_alarm", "dynamodb", "POST", "/", RUNS, {**JSON, "X-Amz-Target": "AmazonSQS.DeleteQueue"}),
    ("function/on_alarm", "dynamodb", "POST", "/", RUNS, {**JSON, "X-Amz-Target": "DynamoDB_20120810.Nope"}),
]  # fmt: skip


@pytest.mark.parametrize("principal,service,method,target,body,headers", ATTACKS, ids=range(len(ATTACKS)))
def test_a_request_read_one_way_by_the_check_and_another_by_the_service_is_refused(
    enforcer: Enforcer, principal: str, service: str, method: str, target: str, body: bytes, headers: dict[str, str]
) -> None:
    keys = KEYS.principal(principal)
    request = signed_request(keys, service, method, target, body, headers)
    refused = check_body(*request, KEYS, "json" in headers.get("Content-Type", ""), enforcer)
    assert refused is not None and "AccessDenied" in refused.code, refused
    assert "not" in refused.message


def test_a_header_that_says_what_a_request_does_is_taken_once() -> None:
    for name in ("x-amz-target", "content-length", "x-amz-copy-source"):
        headers = {"x-amz-target": ["DynamoDB_20120810.GetItem"], name: ["DynamoDB_20120810.GetItem", "x"]}
        placed = request_call("dynamodb", "POST", "/", headers, b'{"TableName": "t", "Key": {}}')
        assert placed == f"dynamodb: the {name} header is sent more than once"
    assert request_call("s3", "GET", f"/{BUCKET}/k?x-id=PutObject", {}, b"") == (
        "s3: the query's x-id 'PutObject' is not the GetObject the request is"
    )


def test_the_execution_roles_policy_is_taken_away_from_a_copy_of_the_templates(tmp_path: Path) -> None:
    """A copy of the role's statements from infra/resources.json, ${DataBucket.Arn} and all,
    resolved as the template's; the folder must exist; any usual word for off turns it off."""
    template = json.loads(Path("infra/resources.json").read_text())
    (policy,) = template["Resources"]["SageMakerExecutionRole"]["Properties"]["Policies"]
    document = policy["PolicyDocument"]
    for statement in document["Statement"]:
        if statement["Sid"] == "WriteOutputs":
            statement["Resource"] = [r for r in statement["Resource"] if "/runs/" not in r["Fn::Sub"]]
    (tmp_path / EXECUTION_ROLE_FILE).write_text(json.dumps(document))
    taken = Enforcer.from_env({"TUNELOOP_LOCAL_POLICY_DIR": str(tmp_path), "TUNELOOP_BUCKET": BUCKET})
    assert taken is not None and "sagemaker-execution.json (TUNELOOP_LOCAL_POLICY_DIR)" in taken.summary()
    role = sigv4.EXECUTION_ROLE
    assert taken.check(role, "s3", "GetObject", {"Bucket": BUCKET, "Key": "datasets/d/x.jsonl"}) is None
    denial = taken.check(role, "s3", "PutObject", {"Bucket": BUCKET, "Key": "runs/r/output/model.tar.gz"})
    assert denial is not None and denial.resource == f"arn:aws:s3:::{BUCKET}/runs/r/output/model.tar.gz"
    with pytest.raises(ValueError, match="no such folder"):
        Enforcer.from_env({"TUNELOOP_LOCAL_POLICY_DIR": str(tmp_path / "typo")})
    for off in ("off", "OFF", "0", "false", "no"):
        assert Enforcer.from_env({"TUNELOOP_LOCAL_IAM": off}) is None
