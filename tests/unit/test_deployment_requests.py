"""Deployment requests (model, endpoint config, endpoint, blue/green update, rollback and
drift alarms, autoscaling, transform) checked by botocore's own models (Stubber)."""

from __future__ import annotations

import dataclasses
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.deployment import (
    DeploymentExecutors,
    autoscaling_requests,
    create_endpoint_request,
    drift_alarm_requests,
    endpoint_config_request,
    model_request,
    quality_alarm_requests,
    rollback_alarm_requests,
    transform_request,
    update_endpoint_request,
)
from chalicelib.domain import names
from chalicelib.domain.commands import (
    ConfigureAutoscaling,
    CreateDriftAlarms,
    DeleteEndpoint,
    DeployEndpoint,
    StartTransformJob,
)
from chalicelib.domain.project import normalise_config
from chalicelib.domain.run import Run
from chalicelib.domain.states import RunState
from chalicelib.executors import PermanentCommandError
from tests.conftest import DEMO_CONFIG, T0
from tests.unit.test_sagemaker_requests import RUN_ID, SETTINGS

PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/tl-demo/3"
ENDPOINT = "tl-demo"


def deployed_run(**deployment: Any) -> Run:
    config = normalise_config({**DEMO_CONFIG, "deployment": {**DEMO_CONFIG["deployment"], **deployment}})
    return Run(
        RUN_ID,
        "demo",
        RunState.DEPLOYING,
        config,
        "s3://tuneloop-test/datasets/demo/ds/reviews.jsonl",
        T0,
        model_source=names.job_name(RUN_ID, "train", 1),
        package_arn=PACKAGE,
    )


def clients() -> dict[str, tuple[Any, Stubber]]:
    keys = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    out = {}
    for service in ("sagemaker", "cloudwatch", "application-autoscaling"):
        client = boto3.client(service, **keys)
        out[service] = (client, Stubber(client))
    return out


def executors(stubs: dict[str, tuple[Any, Stubber]]) -> DeploymentExecutors:
    return DeploymentExecutors(
        stubs["sagemaker"][0], stubs["cloudwatch"][0], stubs["application-autoscaling"][0], SETTINGS
    )


DEPLOY = DeployEndpoint(RUN_ID, "demo", ENDPOINT, names.job_name(RUN_ID, "train", 1))


def expect_model_and_config(stub: Stubber, run: Run) -> None:
    stub.add_response(
        "create_model",
        {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/tl-{RUN_ID}-model-1"},
        model_request(run, SETTINGS),
    )
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/tl-{RUN_ID}-config-1"},
        endpoint_config_request(run, SETTINGS),
    )


def test_first_model_creates_the_endpoint_with_data_capture() -> None:
    run = deployed_run(data_capture_percent=50)
    stubs = clients()
    sagemaker = stubs["sagemaker"][1]
    expect_model_and_config(sagemaker, run)
    sagemaker.add_client_error("describe_endpoint", "ValidationException", f'Could not find endpoint "{ENDPOINT}".')
    sagemaker.add_response(
        "create_endpoint",
        {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/tl-demo"},
        create_endpoint_request(run),
    )
    with sagemaker:
        outcome = executors(stubs).deploy_endpoint(DEPLOY, run)
    sagemaker.assert_no_pending_responses()
    assert outcome.done and "creating endpoint tl-demo" in outcome.note
    model = model_request(run, SETTINGS)
    assert model["PrimaryContainer"] == {"ModelPackageName": PACKAGE}  # what was registered is what serves
    config = endpoint_config_request(run, SETTINGS)
    capture = config["DataCaptureConfig"]
    assert (
        capture["InitialSamplingPercentage"] == 50
        and capture["DestinationS3Uri"] == f"s3://tuneloop-test/capture/demo/{RUN_ID}"
    )
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 1
    # The endpoint outlives the run: no run tag, so its events go to whichever run deploys.
    assert create_endpoint_request(run)["Tags"] == [{"Key": "tuneloop:project", "Value": "demo"}]


def test_later_models_update_blue_green_with_rollback_alarms() -> None:
    run = deployed_run(strategy="canary", canary_percent=20, wait_s=120, baking_s=300)
    stubs = clients()
    sagemaker, cloudwatch = stubs["sagemaker"][1], stubs["cloudwatch"][1]
    expect_model_and_config(sagemaker, run)
    sagemaker.add_response(
        "describe_endpoint",
        {
            "EndpointName": ENDPOINT,
            "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/tl-demo",
            "EndpointConfigName": "tl-bbbbbbbbbbbb-config-1",
            "EndpointStatus": "InService",
            "CreationTime": T0,
            "LastModifiedTime": T0,
        },
        {"EndpointName": ENDPOINT},
    )
    for alarm in rollback_alarm_requests(run):
        cloudwatch.add_response("put_metric_alarm", {}, alarm)
    request = update_endpoint_request(run)
    sagemaker.add_response(
        "update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/tl-demo"}, request
    )
    with sagemaker, cloudwatch:
        outcome = executors(stubs).deploy_endpoint(DEPLOY, run)
    sagemaker.assert_no_pending_responses()
    cloudwatch.assert_no_pending_responses()
    assert "blue/green (canary)" in outcome.note
    policy = request["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {
        "Type": "CANARY",
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20},
        "WaitIntervalInSeconds": 120,
    }
    assert policy["TerminationWaitInSeconds"] == 300
    alarms = request["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]
    assert [a["AlarmName"] for a in alarms] == [
        f"tl-{RUN_ID}-rollback-invocation5xxerrors",
        f"tl-{RUN_ID}-rollback-modellatency",
    ]
    latency = rollback_alarm_requests(run)[1]
    assert latency["Threshold"] == 2_000_000.0  # 2000 ms in ModelLatency's microseconds
    linear = update_endpoint_request(deployed_run(strategy="linear", linear_step_percent=25))
    routing = linear["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["Type"] == "LINEAR" and routing["LinearStepSize"]["Value"] == 25


def test_a_repeat_finds_what_the_first_attempt_made() -> None:
    run = deployed_run()
    stubs = clients()
    sagemaker = stubs["sagemaker"][1]
    sagemaker.add_client_error("create_model", "ValidationException", "Cannot create already existing model")
    sagemaker.add_client_error(
        "create_endpoint_config", "ValidationException", "Cannot create already existing endpoint configuration"
    )
    sagemaker.add_response(
        "describe_endpoint",
        {
            "EndpointName": ENDPOINT,
            "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/tl-demo",
            "EndpointConfigName": f"tl-{RUN_ID}-config-1",
            "EndpointStatus": "Updating",
            "CreationTime": T0,
            "LastModifiedTime": T0,
        },
        {"EndpointName": ENDPOINT},
    )
    with sagemaker:
        outcome = executors(stubs).deploy_endpoint(DEPLOY, run)
    assert "already runs this model" in outcome.note


def test_an_endpoint_mid_update_makes_the_deploy_wait_and_a_bad_request_fails() -> None:
    run = deployed_run()
    stubs = clients()
    sagemaker = stubs["sagemaker"][1]
    expect_model_and_config(sagemaker, run)
    sagemaker.add_response(
        "describe_endpoint",
        {
            "EndpointName": ENDPOINT,
            "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/tl-demo",
            "EndpointConfigName": "tl-bbbbbbbbbbbb-config-1",
            "EndpointStatus": "Updating",
            "CreationTime": T0,
            "LastModifiedTime": T0,
        },
        {"EndpointName": ENDPOINT},
    )
    with sagemaker, pytest.raises(RuntimeError, match="Updating; the update waits"):
        executors(stubs).deploy_endpoint(DEPLOY, run)
    sagemaker.add_client_error("create_model", "ValidationException", "Could not access model data")
    with sagemaker, pytest.raises(PermanentCommandError, match="Could not access model data"):
        executors(stubs).deploy_endpoint(DEPLOY, run)


def test_serverless_endpoints_have_no_instances_and_no_scaling() -> None:
    run = deployed_run(serverless_memory_mb=2048, serverless_max_concurrency=4)
    variant = endpoint_config_request(run, SETTINGS)["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 4}
    assert "InstanceType" not in variant
    assert "DeploymentConfig" not in update_endpoint_request(run)
    outcome = executors(clients()).configure_autoscaling(ConfigureAutoscaling(RUN_ID, "demo", ENDPOINT), run)
    assert "scale themselves" in outcome.note


def test_autoscaling_tracks_invocations_per_instance() -> None:
    run = deployed_run(min_instances=1, max_instances=4, target_invocations_per_instance=50)
    stubs = clients()
    scaling = stubs["application-autoscaling"][1]
    target, policy = autoscaling_requests(run)
    scaling.add_response("register_scalable_target", {}, target)
    scaling.add_response("put_scaling_policy", {"PolicyARN": "arn:p", "Alarms": []}, policy)
    with scaling:
        executors(stubs).configure_autoscaling(ConfigureAutoscaling(RUN_ID, "demo", ENDPOINT), run)
    scaling.assert_no_pending_responses()
    assert target["ResourceId"] == "endpoint/tl-demo/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    spec = policy["TargetTrackingScalingPolicyConfiguration"]
    assert spec["TargetValue"] == 50.0
    assert spec["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"


def test_drift_alarms_follow_the_project_config_and_stop_deletes() -> None:
    run = deployed_run()
    run = dataclasses.replace(
        run,
        config={**run.config, "drift": {**run.config["drift"], "thresholds": {"prediction_psi": 0.25}}},
    )
    stubs = clients()
    cloudwatch, sagemaker = stubs["cloudwatch"][1], stubs["sagemaker"][1]
    [alarm] = drift_alarm_requests(run)
    cloudwatch.add_response("put_metric_alarm", {}, alarm)
    for floor in quality_alarm_requests(run):  # the demo project's floor on production macro-F1
        cloudwatch.add_response("put_metric_alarm", {}, floor)
    with cloudwatch:
        executors(stubs).create_drift_alarms(CreateDriftAlarms(RUN_ID, "demo", ENDPOINT), run)
    assert alarm["AlarmName"] == names.drift_alarm_name(RUN_ID, "prediction_psi")
    assert alarm["Namespace"] == "tuneloop" and alarm["Threshold"] == 0.25
    # Its own series: a later model's alarms never see this model's numbers.
    assert alarm["Dimensions"] == OWN_SERIES
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["Period"] == run.config["drift"]["schedule_minutes"] * 60
    sagemaker.add_response("delete_endpoint", {}, {"EndpointName": ENDPOINT})
    # Stopping deletes the run's drift alarms and its production-quality alarms alike.
    quality = [a["AlarmName"] for a in quality_alarm_requests(run)]
    assert quality == [names.quality_alarm_name(RUN_ID, "production_macro_f1")]  # the demo project's floor
    cloudwatch.add_response("delete_alarms", {}, {"AlarmNames": [alarm["AlarmName"], *quality]})
    with sagemaker, cloudwatch:
        executors(stubs).delete_endpoint(DeleteEndpoint(RUN_ID, ENDPOINT), run)
    cloudwatch.assert_no_pending_responses()


# A monitoring metric's dimensions: the project, its endpoint and the run whose model answered.
OWN_SERIES = [
    {"Name": "project", "Value": "demo"},
    {"Name": "endpoint", "Value": ENDPOINT},
    {"Name": "run", "Value": RUN_ID},
]


def test_quality_floors_make_alarms_below_them() -> None:
    """A floor on a production metric is an alarm on the same metric namespace and
    dimensions as drift, breaching *below* it; no labels yet (no data) is not breaching."""
    run = deployed_run()
    quality = {"thresholds": {"production_macro_f1": 0.7}, "min_labels": 30}
    run = dataclasses.replace(
        run, config={**run.config, "drift": {**run.config["drift"], "thresholds": {}}, "quality": quality}
    )
    stubs = clients()
    cloudwatch = stubs["cloudwatch"][1]
    [alarm] = quality_alarm_requests(run)
    cloudwatch.add_response("put_metric_alarm", {}, alarm)
    with cloudwatch:
        outcome = executors(stubs).create_drift_alarms(CreateDriftAlarms(RUN_ID, "demo", ENDPOINT), run)
    cloudwatch.assert_no_pending_responses()
    assert alarm["AlarmName"] == names.quality_alarm_name(RUN_ID, "production_macro_f1") in outcome.note
    assert alarm["ComparisonOperator"] == "LessThanThreshold" and alarm["Threshold"] == 0.7
    assert alarm["Dimensions"] == OWN_SERIES
    assert alarm["TreatMissingData"] == "notBreaching" and names.is_monitoring_alarm_of(alarm["AlarmName"], RUN_ID)


def test_batch_projects_get_a_transform_job() -> None:
    run = deployed_run(mode="batch", batch_input_uri="s3://tuneloop-test/batch/demo/")
    command = StartTransformJob(RUN_ID, "demo", names.job_name(RUN_ID, "transform"))
    stubs = clients()
    sagemaker = stubs["sagemaker"][1]
    request = transform_request(command, run, SETTINGS)
    sagemaker.add_response(
        "create_model",
        {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/tl-{RUN_ID}-model-1"},
        model_request(run, SETTINGS),
    )
    sagemaker.add_response(
        "create_transform_job",
        {"TransformJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:transform-job/tl-{RUN_ID}-transform-1"},
        request,
    )
    with sagemaker:
        executors(stubs).start_transform_job(command, run)
    sagemaker.assert_no_pending_responses()
    assert request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://tuneloop-test/batch/demo/"
    assert request["TransformOutput"]["S3OutputPath"] == f"s3://tuneloop-test/runs/{RUN_ID}/transform/"
    # Every output line carries an inference id that feedback can be joined on.
    assert request["DataCaptureConfig"] == {
        "DestinationS3Uri": "s3://tuneloop-test/capture/demo/batch",
        "GenerateInferenceId": True,
    }


def test_a_superseded_or_rolled_back_run_retires_its_model_config_and_alarms() -> None:
    from chalicelib.domain.commands import RetireDeployment

    run = deployed_run()
    stubs = clients()
    sagemaker, cloudwatch = stubs["sagemaker"][1], stubs["cloudwatch"][1]
    sagemaker.add_response("delete_endpoint_config", {}, {"EndpointConfigName": f"tl-{RUN_ID}-config-1"})
    sagemaker.add_client_error("delete_model", "ValidationException", f'Could not find model "tl-{RUN_ID}-model-1".')
    alarms = [a["AlarmName"] for a in (*drift_alarm_requests(run), *quality_alarm_requests(run),
                                       *rollback_alarm_requests(run))]  # fmt: skip
    cloudwatch.add_response("delete_alarms", {}, {"AlarmNames": alarms})
    with sagemaker, cloudwatch:
        outcome = executors(stubs).retire_deployment(RetireDeployment(RUN_ID, "demo"), run)
    assert f"deleted tl-{RUN_ID}-config-1 and 6 alarm(s)" == outcome.note
    assert len(alarms) == 6 and any("rollback" in a for a in alarms) and any("drift" in a for a in alarms)
    assert any("quality" in a for a in alarms)


def test_a_model_made_from_an_adapters_artifact_names_its_base() -> None:
    """Without a package (a batch model made before registration), CreateModel itself
    carries the base as an AdditionalModelDataSource; with one, the package does."""
    from tests.unit.test_sagemaker_requests import BASE, adapter_run

    run = adapter_run()
    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu")
    request = model_request(run, settings)
    assert request["PrimaryContainer"]["AdditionalModelDataSources"] == [
        {"ChannelName": "base", "S3DataSource": {"S3Uri": BASE, "S3DataType": "S3Object", "CompressionType": "Gzip"}}
    ]
    stubs = clients()
    client, stub = stubs["sagemaker"]
    stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:1:model/x"}, request)
    with stub:
        client.create_model(**request)
    packaged = dataclasses.replace(run, package_arn=PACKAGE)
    assert model_request(packaged, settings)["PrimaryContainer"] == {"ModelPackageName": PACKAGE}
