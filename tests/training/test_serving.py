"""Local endpoints for real: a fine-tuned model served, invoked through SageMaker Runtime,
captured, switched blue/green under load, rolled back on an alarm, and run as a batch transform."""

from __future__ import annotations

import json
import tarfile
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import BUCKET, wait_for
from tuneloop.local import sagemaker as sagemaker_server
from tuneloop.local.container import toolkit

pytestmark = [pytest.mark.training, pytest.mark.integration]
ROLE = "arn:aws:iam::123456789012:role/tuneloop-test-sagemaker-execution"


@pytest.fixture(scope="module")
def hosted(
    local_services: Any, classifier: tuple[toolkit.TrainingLayout, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    s3, cloudwatch = boto3.client("s3"), boto3.client("cloudwatch")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    archive = tmp_path_factory.mktemp("model") / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in classifier[0].model_dir.iterdir():
            tar.add(path, arcname=path.name)
    s3.upload_file(str(archive), BUCKET, "serving/model.tar.gz")
    events: list[dict[str, Any]] = []
    http = sagemaker_server.serve(tmp_path_factory.mktemp("sm"), s3, events.append, cloudwatch=cloudwatch)
    url = f"http://127.0.0.1:{http.port}"
    client = boto3.client("sagemaker", endpoint_url=url)
    runtime = boto3.client("sagemaker-runtime", endpoint_url=url)
    for n in (1, 2, 3):
        client.create_model(
            ModelName=f"tl-model-{n}",
            PrimaryContainer={"Image": "local/inference", "ModelDataUrl": f"s3://{BUCKET}/serving/model.tar.gz"},
            ExecutionRoleArn=ROLE,
        )
        client.create_endpoint_config(
            EndpointConfigName=f"tl-config-{n}",
            ProductionVariants=[
                {"VariantName": "AllTraffic", "ModelName": f"tl-model-{n}", "InstanceType": "ml.m5.large",
                 "InitialInstanceCount": 1}
            ],
            DataCaptureConfig={
                "EnableCapture": True, "InitialSamplingPercentage": 100,
                "DestinationS3Uri": f"s3://{BUCKET}/capture/serving",
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            },
        )  # fmt: skip
    client.create_endpoint(EndpointName="tl-serving", EndpointConfigName="tl-config-1")
    in_service = wait_for(
        lambda: (d := client.describe_endpoint(EndpointName="tl-serving"))["EndpointStatus"] == "InService" and d,
        180,
        what="endpoint in service",
    )
    yield {"client": client, "runtime": runtime, "s3": s3, "cloudwatch": cloudwatch, "events": events,
           "http": http, "described": in_service}  # fmt: skip
    http.backend.close()
    http.shutdown()


def invoke(runtime: Any, payload: Any) -> tuple[dict[str, Any], Any]:
    answer = runtime.invoke_endpoint(
        EndpointName="tl-serving", ContentType="application/json", Body=json.dumps(payload)
    )
    return answer, json.loads(answer["Body"].read())


def test_endpoint_answers_pings_and_invocations(hosted: dict[str, Any]) -> None:
    answer, body = invoke(hosted["runtime"], "an excellent, delightful film; I loved every minute")
    assert body["label"] in ("positive", "negative") and abs(sum(body["scores"].values()) - 1) < 1e-3
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    _, many = invoke(hosted["runtime"], {"inputs": ["dull and far too long", "wonderful acting"]})
    assert len(many) == 2
    with pytest.raises(ClientError) as bad:
        invoke(hosted["runtime"], {"text": "no inputs field"})
    assert bad.value.response["Error"]["Code"] == "ModelError"
    assert bad.value.response["OriginalStatusCode"] == 400 and "inputs" in bad.value.response["OriginalMessage"]
    with pytest.raises(ClientError, match="not found"):
        hosted["runtime"].invoke_endpoint(EndpointName="tl-nowhere", ContentType="application/json", Body=b'"x"')
    fleet = hosted["http"].backend.hosting.endpoints["tl-serving"].fleets[0][0]
    import urllib.request

    ping = urllib.request.Request(f"http://127.0.0.1:{fleet.port}/ping", headers=fleet.auth)
    with urllib.request.urlopen(ping, timeout=5) as answer:
        assert answer.status == 200
    # The model server answers the runtime (which checked the caller's signature) only:
    # a local user who finds its port, or a page rebinding a name to it, is refused.
    import urllib.error

    for headers in ({}, {"Authorization": "Bearer guessed-token-0000"}, {**fleet.auth, "Host": "evil.example"}):
        for path, body in (("/ping", None), ("/invocations", b'{"inputs": "x"}')):
            probe = urllib.request.Request(f"http://127.0.0.1:{fleet.port}{path}", data=body, headers=headers)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(probe, timeout=5)
            assert refused.value.code == 403
    statuses = [
        e["detail"]["EndpointStatus"] for e in hosted["events"] if e["detail-type"] == "SageMaker Endpoint State Change"
    ]
    assert statuses[:2] == ["CREATING", "IN_SERVICE"]


def test_traffic_is_captured_in_sagemakers_format(hosted: dict[str, Any]) -> None:
    invoke(hosted["runtime"], "a capture test sentence")
    s3 = hosted["s3"]

    def captured() -> list[dict[str, Any]]:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="capture/serving/tl-serving/AllTraffic/")
                .get("Contents", [])]  # fmt: skip
        lines = []
        for key in keys:
            lines += s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()
        records = [json.loads(line) for line in lines]
        return [r for r in records if "capture test" in r["captureData"]["endpointInput"]["data"]]

    [record] = wait_for(captured, 30, "capture record")
    assert record["eventVersion"] == "0" and record["eventMetadata"]["eventId"]
    assert record["captureData"]["endpointInput"] == {
        "observedContentType": "application/json", "mode": "INPUT", "data": '"a capture test sentence"',
        "encoding": "JSON",
    }  # fmt: skip
    output = json.loads(record["captureData"]["endpointOutput"]["data"])
    assert output["label"] in ("positive", "negative")


def test_every_captured_request_has_an_id_its_caller_can_keep(hosted: dict[str, Any]) -> None:
    """Labels that arrive later are joined to captured traffic by inference id: the
    caller's InferenceId when it passes one, else the capture's event id, which the
    local runtime returns in the X-Amzn-SageMaker-Inference-Id header."""
    runtime, s3 = hosted["runtime"], hosted["s3"]
    kept = runtime.invoke_endpoint(
        EndpointName="tl-serving",
        ContentType="application/json",
        Body=b'"an id test: order 42"',
        InferenceId="order-42",
    )
    assert kept["ResponseMetadata"]["HTTPHeaders"]["x-amzn-sagemaker-inference-id"] == "order-42"
    given = runtime.invoke_endpoint(
        EndpointName="tl-serving", ContentType="application/json", Body=b'"an id test: none"'
    )
    generated = given["ResponseMetadata"]["HTTPHeaders"]["x-amzn-sagemaker-inference-id"]
    # (A leading space cannot be tested over HTTP: header values arrive stripped.)
    for bad in ("x" * 65, "tab\tinside", "bell\x07"):
        with pytest.raises(ClientError) as refused:
            runtime.invoke_endpoint(
                EndpointName="tl-serving", ContentType="application/json", Body=b'"x"', InferenceId=bad
            )
        assert refused.value.response["Error"]["Code"] == "ValidationError" and "InferenceId" in str(refused.value)

    def captured() -> dict[str, dict[str, Any]] | None:
        records = {}
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="capture/serving/tl-serving/AllTraffic/").get("Contents", []):
            for line in s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().decode().splitlines():
                record = json.loads(line)
                if "an id test" in record["captureData"]["endpointInput"]["data"]:
                    records[json.loads(record["captureData"]["endpointInput"]["data"])] = record["eventMetadata"]
        return records if len(records) == 2 else None

    metadata = wait_for(captured, 30, "both capture records")
    assert metadata["an id test: order 42"]["inferenceId"] == "order-42"
    assert "inferenceId" not in metadata["an id test: none"]
    assert metadata["an id test: none"]["eventId"] == generated


def load(runtime: Any, stop: threading.Event, results: list[int]) -> None:
    while not stop.is_set():
        try:
            runtime.invoke_endpoint(EndpointName="tl-serving", ContentType="application/json", Body=b'"steady traffic"')
            results.append(200)
        except ClientError as exc:
            results.append(int(exc.response["ResponseMetadata"]["HTTPStatusCode"]))


def under_load(hosted: dict[str, Any], action: Any, done: Any) -> list[int]:
    stop, results = threading.Event(), []
    workers = [threading.Thread(target=load, args=(hosted["runtime"], stop, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        action()
        wait_for(done, 240, "deployment end")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    return results


def deployment_states(hosted: dict[str, Any]) -> list[str]:
    return [
        e["detail"]["State"]
        for e in hosted["events"]
        if e["detail-type"] == "SageMaker Endpoint Deployment State Change"
    ]


def test_blue_green_switch_drops_no_request(hosted: dict[str, Any]) -> None:
    client = hosted["client"]
    seen: list[dict[str, Any]] = []

    def described() -> dict[str, Any]:
        seen.append(client.describe_endpoint(EndpointName="tl-serving"))
        return seen[-1]

    results = under_load(
        hosted,
        lambda: client.update_endpoint(
            EndpointName="tl-serving",
            EndpointConfigName="tl-config-2",
            DeploymentConfig={
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "CANARY",
                        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50},
                        "WaitIntervalInSeconds": 2,
                    },
                    "TerminationWaitInSeconds": 2,
                }
            },
        ),
        lambda: described()["EndpointStatus"] == "InService",
    )
    # While traffic shifts, DescribeEndpoint shows the new fleet and its share, as SageMaker does.
    shifting = [d for d in seen if d["EndpointStatus"] == "Updating" and d.get("PendingDeploymentSummary")]
    halfway = [
        d for d in shifting
        if d["PendingDeploymentSummary"]["ProductionVariants"]
        and d["PendingDeploymentSummary"]["ProductionVariants"][0]["VariantStatus"][0]["Status"] == "ActivatingTraffic"
    ]  # fmt: skip
    assert halfway, [d.get("PendingDeploymentSummary") for d in seen]
    pending = halfway[0]["PendingDeploymentSummary"]
    assert pending["EndpointConfigName"] == "tl-config-2"
    assert pending["ProductionVariants"][0]["CurrentWeight"] == 0.5
    assert halfway[0]["ProductionVariants"][0]["CurrentWeight"] == 0.5
    assert "PendingDeploymentSummary" not in seen[-1]
    assert len(results) >= 200 and set(results) == {200}, {s: results.count(s) for s in set(results)}
    assert client.describe_endpoint(EndpointName="tl-serving")["EndpointConfigName"] == "tl-config-2"
    assert deployment_states(hosted)[-4:] == ["TRAFFIC_SHIFTING", "TRAFFIC_SHIFTING", "BAKING", "COMPLETED"]


def test_an_alarm_during_the_shift_rolls_back(hosted: dict[str, Any]) -> None:
    client, cloudwatch = hosted["client"], hosted["cloudwatch"]
    cloudwatch.put_metric_alarm(
        AlarmName="tl-serving-rollback-5xx", Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=0, ComparisonOperator="GreaterThanThreshold",
    )  # fmt: skip
    cloudwatch.set_alarm_state(AlarmName="tl-serving-rollback-5xx", StateValue="ALARM", StateReason="test")
    results = under_load(
        hosted,
        lambda: client.update_endpoint(
            EndpointName="tl-serving",
            EndpointConfigName="tl-config-3",
            DeploymentConfig={
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                    "TerminationWaitInSeconds": 30,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "tl-serving-rollback-5xx"}]},
            },
        ),
        lambda: client.describe_endpoint(EndpointName="tl-serving")["EndpointStatus"] == "InService",
    )
    assert results and set(results) == {200}
    described = client.describe_endpoint(EndpointName="tl-serving")
    assert described["EndpointConfigName"] == "tl-config-2"  # the old model serves on
    assert "tl-serving-rollback-5xx" in described["FailureReason"]
    assert deployment_states(hosted)[-1] == "ROLLBACK_COMPLETED"
    with pytest.raises(ClientError, match="already existing endpoint"):
        client.create_endpoint(EndpointName="tl-serving", EndpointConfigName="tl-config-1")


def test_batch_transform_answers_every_line(hosted: dict[str, Any]) -> None:
    client, s3 = hosted["client"], hosted["s3"]
    lines = [json.dumps(t) for t in ("great fun", "boring plot", "superb")] + [json.dumps({"text": "bad shape"})]
    s3.put_object(Bucket=BUCKET, Key="batch/in/part-1.jsonl", Body="\n".join(lines[:3]).encode())
    s3.put_object(Bucket=BUCKET, Key="batch/in/more/part-2.jsonl", Body=lines[0].encode())  # a sub-folder
    client.create_transform_job(
        TransformJobName="tl-transform-1", ModelName="tl-model-1",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/batch/in/"}},
                        "ContentType": "application/json", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/batch/out/", "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        DataCaptureConfig={"DestinationS3Uri": f"s3://{BUCKET}/capture/batch", "GenerateInferenceId": True},
    )  # fmt: skip
    done = wait_for(
        lambda: (
            (d := client.describe_transform_job(TransformJobName="tl-transform-1"))["TransformJobStatus"]
            != "InProgress"
            and d
        ),
        180,
        what="transform",
    )
    assert done["TransformJobStatus"] == "Completed", done.get("FailureReason")
    body = s3.get_object(Bucket=BUCKET, Key="batch/out/part-1.jsonl.out")["Body"].read().decode()
    out = [json.loads(line) for line in body.splitlines()]
    assert [line["SageMakerOutput"]["label"] in ("positive", "negative") for line in out] == [True] * 3
    # GenerateInferenceId: every answer carries an id, and a capture record per line has it,
    # with the text that was sent: labels that arrive later join on it.
    ids = [line["SageMakerInferenceId"] for line in out]
    assert len(set(ids)) == 3 and all(line["SageMakerInferenceTime"].endswith("Z") for line in out)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="capture/batch/tl-transform-1/")["Contents"]]
    records = [json.loads(line) for key in keys
               for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()]  # fmt: skip
    by_id = {r["eventMetadata"]["inferenceId"]: r for r in records}
    assert set(ids) <= set(by_id) and len(records) == 4
    assert json.loads(by_id[ids[1]]["captureData"]["endpointInput"]["data"]) == "boring plot"
    # The output mirrors the input's layout, as SageMaker's does.
    nested = s3.get_object(Bucket=BUCKET, Key="batch/out/more/part-2.jsonl.out")["Body"].read().decode()
    assert len(nested.splitlines()) == 1
    s3.put_object(Bucket=BUCKET, Key="batch/bad/part-1.jsonl", Body=lines[3].encode())
    client.create_transform_job(
        TransformJobName="tl-transform-2", ModelName="tl-model-1",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/batch/bad/"}},
                        "ContentType": "application/json", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/batch/bad-out/"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )  # fmt: skip
    failed = wait_for(
        lambda: (
            (d := client.describe_transform_job(TransformJobName="tl-transform-2"))["TransformJobStatus"]
            != "InProgress"
            and d
        ),
        180,
        what="failed transform",
    )
    assert failed["TransformJobStatus"] == "Failed" and "inputs" in failed["FailureReason"]


def test_an_endpoint_in_service_answers_right_after_a_restart(hosted: dict[str, Any], tmp_path: Any) -> None:
    """Describe says InService the moment the server is back; a request that comes before
    the serving process has started again waits for it rather than failing."""
    first = sagemaker_server.LocalSageMaker(tmp_path, hosted["s3"], lambda event: None)
    first.call("CreateModel", {"ModelName": "tl-again", "ExecutionRoleArn": ROLE, "PrimaryContainer": {
        "Image": "local/inference", "ModelDataUrl": f"s3://{BUCKET}/serving/model.tar.gz"}})  # fmt: skip
    first.call("CreateEndpointConfig", {"EndpointConfigName": "tl-again-config", "ProductionVariants": [{
        "VariantName": "AllTraffic", "ModelName": "tl-again", "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1}]})  # fmt: skip
    first.call("CreateEndpoint", {"EndpointName": "tl-again", "EndpointConfigName": "tl-again-config"})
    wait_for(lambda: first.call("DescribeEndpoint", {"EndpointName": "tl-again"})["EndpointStatus"] == "InService",
             180, what="endpoint in service")  # fmt: skip
    first.close()
    again = sagemaker_server.LocalSageMaker(tmp_path, hosted["s3"], lambda event: None)
    try:
        assert again.call("DescribeEndpoint", {"EndpointName": "tl-again"})["EndpointStatus"] == "InService"
        status, body, _ = again.runtime.invoke("tl-again", json.dumps("sturdy and quiet").encode(),
                                               "application/json", "application/json")  # fmt: skip
        assert status == 200 and "label" in json.loads(body)
    finally:
        again.close()
