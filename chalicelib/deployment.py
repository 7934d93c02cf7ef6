"""Serving: the requests that deploy, scale, watch and retire a run's model, and their executors.

One endpoint per project (``tl-<stage>-<project>``). The first model creates it; every later model
replaces it blue/green (canary or linear traffic shifting, a baking period) with
auto-rollback on alarms tuneloop creates for that deployment (any 5XX, model latency).
Batch projects get a transform job instead. Request builders are pure, as in
``sagemaker.py``; executors take their boto3 clients in the constructor.

Names are deterministic (``tl-<stage>-<run>-model-1``, ``tl-<stage>-<run>-config-1``), so a repeated command
finds what the first attempt made. SageMaker answers a repeated CreateModel or
CreateEndpointConfig with a ValidationException ("Cannot create already existing …"),
which counts as done here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from . import spec
from .config import Settings
from .domain import names
from .domain.commands import (
    Command,
    ConfigureAutoscaling,
    CreateDriftAlarms,
    DeleteEndpoint,
    DeployEndpoint,
    RetireDeployment,
    StartTransformJob,
)
from .domain.run import Run
from .events import PROJECT_TAG
from .executors import Outcome, PermanentCommandError
from .sagemaker import (
    _code,
    _require,
    _vpc,
    base_model_sources,
    capture_uri,
    model_artifact_uri,
    run_capture_uri,
    run_prefix,
    run_tags,
    serving_image,
    tags,
)

VARIANT = "AllTraffic"
DRIFT_NAMESPACE = "tuneloop"
# What SageMaker emits per endpoint variant (namespace AWS/SageMaker).
ROLLBACK_METRICS = ("Invocation5XXErrors", "ModelLatency")


def model_name(run: Run) -> str:
    return names.job_name(run.run_id, "model", stage=run.stage)


def endpoint_config_name(run: Run) -> str:
    return names.job_name(run.run_id, "config", stage=run.stage)


def rollback_alarm_name(run: Run, metric: str) -> str:
    return f"{names.prefix(run.stage)}{run.run_id}-rollback-{metric.lower()}"


def batch_capture_uri(settings: Settings, project: str) -> str:
    """Where a batch project's transform jobs capture their records."""
    return f"{capture_uri(settings, project)}/batch"


def model_request(run: Run, settings: Settings) -> dict[str, Any]:
    """The registered package when there is one (lineage), else the training job's artifact."""
    container: dict[str, Any]
    if run.package_arn:
        container = {"ModelPackageName": run.package_arn}
    else:
        container = {
            "Image": serving_image(settings, run),
            "ModelDataUrl": model_artifact_uri(settings, run, _require(run.model_source, "the run's model")),
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py"},
        }
        sources = base_model_sources(run)  # a registered package carries its own
        if sources:
            container["AdditionalModelDataSources"] = sources
    request: dict[str, Any] = {
        "ModelName": model_name(run),
        "PrimaryContainer": container,
        "ExecutionRoleArn": _require(settings.role_arn, "the SageMaker execution role"),
        "Tags": run_tags(run.run_id, run.project),
    }
    vpc = _vpc(settings)
    if vpc:
        request["VpcConfig"] = vpc
    return request


# How long an endpoint's container may take to start: SageMaker's default (a few minutes)
# is too short to pip install torch and transformers first.
STARTUP_TIMEOUT_S = 1800


def endpoint_config_request(run: Run, settings: Settings) -> dict[str, Any]:
    deployment = run.config["deployment"]
    variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name(run)}
    if deployment["serverless_memory_mb"]:
        variant["ServerlessConfig"] = {
            "MemorySizeInMB": deployment["serverless_memory_mb"],
            "MaxConcurrency": deployment["serverless_max_concurrency"],
        }
    else:
        variant.update(
            InstanceType=deployment["instance_type"],
            InitialInstanceCount=deployment["min_instances"],
            InitialVariantWeight=1.0,
            # The container installs the tested framework versions (code/requirements.txt,
            # torch among them) before it answers its health check.
            ContainerStartupHealthCheckTimeoutInSeconds=STARTUP_TIMEOUT_S,
        )
    request: dict[str, Any] = {
        "EndpointConfigName": endpoint_config_name(run),
        "ProductionVariants": [variant],
        "Tags": run_tags(run.run_id, run.project),
    }
    if deployment["data_capture_percent"] > 0:
        request["DataCaptureConfig"] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": deployment["data_capture_percent"],
            # A prefix per run: each model's traffic is its own (during a canary, each fleet
            # writes under its own config's); SageMaker adds <endpoint>/<variant>/yyyy/mm/dd/hh/.
            "DestinationS3Uri": run_capture_uri(settings.bucket, run),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        }
        if settings.kms_key_id:
            request["DataCaptureConfig"]["KmsKeyId"] = settings.kms_key_id
    if settings.kms_key_id and not deployment["serverless_memory_mb"]:
        request["KmsKeyId"] = settings.kms_key_id
    return request


def create_endpoint_request(run: Run) -> dict[str, Any]:
    # The endpoint outlives runs: it is tagged with the project only, and its events are
    # matched to the run waiting on it.
    return {
        "EndpointName": names.endpoint_name(run.project, stage=run.stage),
        "EndpointConfigName": endpoint_config_name(run),
        "Tags": [{"Key": PROJECT_TAG, "Value": run.project}],
    }


def rollback_alarm_requests(run: Run) -> list[dict[str, Any]]:
    """Alarms SageMaker watches while it shifts traffic; either one rolls the update back."""
    deployment = run.config["deployment"]
    dimensions = [
        {"Name": "EndpointName", "Value": names.endpoint_name(run.project, stage=run.stage)},
        {"Name": "VariantName", "Value": VARIANT},
    ]
    common = {
        "Namespace": "AWS/SageMaker",
        "Dimensions": dimensions,
        "Period": 60,
        "EvaluationPeriods": 1,
        "TreatMissingData": "notBreaching",
        "Tags": [{"Key": PROJECT_TAG, "Value": run.project}],
    }
    return [
        {
            "AlarmName": rollback_alarm_name(run, "Invocation5XXErrors"),
            "AlarmDescription": f"roll back run {run.run_id}'s deployment on any 5XX",
            "MetricName": "Invocation5XXErrors",
            "Statistic": "Sum",
            "Threshold": 0.0,
            "ComparisonOperator": "GreaterThanThreshold",
            **common,
        },
        {
            "AlarmName": rollback_alarm_name(run, "ModelLatency"),
            "AlarmDescription": f"roll back run {run.run_id}'s deployment on slow answers",
            "MetricName": "ModelLatency",
            "ExtendedStatistic": "p99",
            # ModelLatency is reported in microseconds.
            "Threshold": float(deployment["rollback_latency_ms"]) * 1000,
            "ComparisonOperator": "GreaterThanThreshold",
            **common,
        },
    ]


def update_endpoint_request(run: Run) -> dict[str, Any]:
    deployment = run.config["deployment"]
    routing: dict[str, Any]
    if deployment["strategy"] == "canary":
        routing = {
            "Type": "CANARY",
            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": deployment["canary_percent"]},
            "WaitIntervalInSeconds": deployment["wait_s"],
        }
    elif deployment["strategy"] == "linear":
        routing = {
            "Type": "LINEAR",
            "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": deployment["linear_step_percent"]},
            "WaitIntervalInSeconds": deployment["wait_s"],
        }
    else:
        routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
    request: dict[str, Any] = {
        "EndpointName": names.endpoint_name(run.project, stage=run.stage),
        "EndpointConfigName": endpoint_config_name(run),
    }
    if not deployment["serverless_memory_mb"]:  # serverless variants update all at once
        request["DeploymentConfig"] = {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": routing,
                "TerminationWaitInSeconds": deployment["baking_s"],
                "MaximumExecutionTimeoutInSeconds": max(
                    600, min(28800, deployment["wait_s"] * 20 + deployment["baking_s"] + 1800)
                ),
            },
            "AutoRollbackConfiguration": {
                "Alarms": [{"AlarmName": a["AlarmName"]} for a in rollback_alarm_requests(run)]
            },
        }
    return request


STAGE_TAG = "tuneloop:stage"


def autoscaling_requests(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """Target tracking on invocations per instance, between the config's min and max."""
    deployment = run.config["deployment"]
    resource = f"endpoint/{names.endpoint_name(run.project, stage=run.stage)}/variant/{VARIANT}"
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource,
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "MinCapacity": deployment["min_instances"],
        "MaxCapacity": deployment["max_instances"],
        # Application Auto Scaling's ARNs carry no names: the stage's policies act only on
        # targets tagged with their stage.
        "Tags": {STAGE_TAG: run.stage, PROJECT_TAG: run.project},
    }
    policy = {
        "PolicyName": f"{names.endpoint_name(run.project, stage=run.stage)}-invocations",
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource,
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(deployment["target_invocations_per_instance"]),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    }
    return target, policy


def drift_dimensions(project: str, run_id: str, *, stage: str) -> list[dict[str, str]]:
    """A monitoring metric's dimensions: the project, its endpoint and the run whose model
    answered. Each run's alarms watch its own series, so a new model's start with no data
    rather than its predecessor's numbers."""
    return [
        {"Name": "project", "Value": project},
        {"Name": "endpoint", "Value": names.endpoint_name(project, stage=stage)},
        {"Name": "run", "Value": run_id},
    ]


def _monitoring_alarm(run: Run, name: str, metric: str, threshold: float, below: bool, about: str) -> dict[str, Any]:
    """An alarm on a metric the monitoring job publishes (namespace ``tuneloop``) for this
    run's model alone, evaluated once per check window; no data is not breaching."""
    drift = run.config["drift"]
    return {
        "AlarmName": name,
        "AlarmDescription": (
            f"{metric} of {names.endpoint_name(run.project, stage=run.stage)}'s {about}; ALARM starts a retraining run"
        ),
        "Namespace": DRIFT_NAMESPACE,
        "MetricName": metric,
        "Dimensions": drift_dimensions(run.project, run.run_id, stage=run.stage),
        "Statistic": "Minimum" if below else "Maximum",
        "Period": drift["schedule_minutes"] * 60,
        "EvaluationPeriods": drift["evaluation_periods"],
        "Threshold": float(threshold),
        "ComparisonOperator": "LessThanThreshold" if below else "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "Tags": [{"Key": PROJECT_TAG, "Value": run.project}],
    }


def drift_alarm_requests(run: Run) -> list[dict[str, Any]]:
    """One alarm per drift metric the project sets a threshold for; no data is no drift."""
    return [
        _monitoring_alarm(
            run,
            names.drift_alarm_name(run.run_id, metric, stage=run.stage),
            metric,
            threshold,
            False,
            f"traffic run {run.run_id}'s model answered, against its training data",
        )
        for metric, threshold in sorted(run.config["drift"]["thresholds"].items())
    ]


def quality_alarm_requests(run: Run) -> list[dict[str, Any]]:
    """One alarm per production metric the project sets a limit for: past it (below a
    floor, above a ceiling such as the correction rate; by more than the sample's noise,
    which the job clips away) is ALARM; no feedback yet is not breaching."""
    limits = (run.config.get("quality") or {}).get("thresholds") or {}
    alarms = []
    for metric, threshold in sorted(limits.items()):
        below = spec.METRICS[metric].better != spec.LOWER if metric in spec.METRICS else True
        side = "below" if below else "above"
        alarms.append(
            _monitoring_alarm(
                run,
                names.quality_alarm_name(run.run_id, metric, stage=run.stage),
                metric,
                threshold,
                below,
                f"labelled traffic {side} {threshold:g} (run {run.run_id}'s model)",
            )
        )
    return alarms


def monitoring_alarm_requests(run: Run) -> list[dict[str, Any]]:
    """The drift and production-quality alarms of a deployed run."""
    return [*drift_alarm_requests(run), *quality_alarm_requests(run)]


def transform_output(settings: Settings, run_id: str) -> str:
    """Where a batch run's transform writes: one ``<input file>.out`` per input file, in the
    input's layout."""
    return f"{run_prefix(settings, run_id)}/transform/"


def transform_request(command: StartTransformJob, run: Run, settings: Settings) -> dict[str, Any]:
    deployment = run.config["deployment"]
    request: dict[str, Any] = {
        "TransformJobName": command.job_name,
        "ModelName": model_name(run),
        "BatchStrategy": "SingleRecord",
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": _require(deployment["batch_input_uri"], "input")}
            },
            "ContentType": "application/json",
            "SplitType": "Line",
        },
        "TransformOutput": {
            "S3OutputPath": transform_output(settings, run.run_id),
            "Accept": "application/json",
            "AssembleWith": "Line",
        },
        "TransformResources": {"InstanceType": deployment["instance_type"], "InstanceCount": 1},
        "Tags": tags(command),
    }
    if deployment["data_capture_percent"] > 0:
        # Every output line gets an inference id (and time) that labels arriving later can
        # be joined on, as the endpoint's callers get one per request.
        request["DataCaptureConfig"] = {"DestinationS3Uri": batch_capture_uri(settings, run.project),
                                        "GenerateInferenceId": True}  # fmt: skip
    if settings.kms_key_id:
        request["TransformOutput"]["KmsKeyId"] = settings.kms_key_id
        request["TransformResources"]["VolumeKmsKeyId"] = settings.kms_key_id
        if "DataCaptureConfig" in request:
            request["DataCaptureConfig"]["KmsKeyId"] = settings.kms_key_id
    return request


def _exists(exc: ClientError) -> bool:
    code = _code(exc)
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return code == "ResourceInUse" or (code == "ValidationException" and "already exist" in message)


def _missing(exc: ClientError) -> bool:
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return _code(exc) in ("ValidationException", "ResourceNotFound") and (
        "could not find" in message or "not found" in message or "does not exist" in message
    )


class DeploymentExecutors:
    """DeployEndpoint, StartTransformJob, ConfigureAutoscaling, CreateDriftAlarms, DeleteEndpoint,
    RetireDeployment."""

    def __init__(self, sagemaker: Any, cloudwatch: Any, autoscaling: Any, settings: Settings) -> None:
        self._sagemaker = sagemaker
        self._cloudwatch = cloudwatch
        self._autoscaling = autoscaling
        self._settings = settings

    def _call(self, client: Any, operation: str, request: Mapping[str, Any]) -> bool:
        """True when made now, False when an earlier attempt made it."""
        try:
            getattr(client, operation)(**request)
        except ClientError as exc:
            if _exists(exc):
                return False
            if _code(exc) in ("ValidationException", "AccessDeniedException", "ResourceLimitExceeded"):
                message = exc.response["Error"].get("Message", "")
                raise PermanentCommandError(f"{operation}: {_code(exc)}: {message}") from exc
            raise
        return True

    def _model(self, run: Run) -> None:
        self._call(self._sagemaker, "create_model", model_request(run, self._settings))

    def deploy_endpoint(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, DeployEndpoint)
        self._model(run)
        self._call(self._sagemaker, "create_endpoint_config", endpoint_config_request(run, self._settings))
        try:
            current = self._sagemaker.describe_endpoint(EndpointName=command.endpoint_name)
        except ClientError as exc:
            if not _missing(exc):
                raise
            self._call(self._sagemaker, "create_endpoint", create_endpoint_request(run))
            return Outcome(done=True, note=f"creating endpoint {command.endpoint_name}")
        if current.get("EndpointConfigName") == endpoint_config_name(run):
            return Outcome(done=True, note=f"{command.endpoint_name} already runs this model (a repeat)")
        if current.get("EndpointStatus") in ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"):
            # Raised as transient: the reconciler tries again once the endpoint settles.
            raise RuntimeError(f"{command.endpoint_name} is {current['EndpointStatus']}; the update waits")
        request = update_endpoint_request(run)
        if "DeploymentConfig" in request:
            for alarm in rollback_alarm_requests(run):
                self._cloudwatch.put_metric_alarm(**alarm)
        self._call(self._sagemaker, "update_endpoint", request)
        strategy = run.config["deployment"]["strategy"]
        return Outcome(done=True, note=f"updating {command.endpoint_name} blue/green ({strategy})")

    def start_transform_job(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, StartTransformJob)
        self._model(run)
        made = self._call(self._sagemaker, "create_transform_job", transform_request(command, run, self._settings))
        return Outcome(done=True, note="create_transform_job sent" if made else "already created (a repeat)")

    def configure_autoscaling(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, ConfigureAutoscaling)
        if run.config["deployment"]["serverless_memory_mb"]:
            return Outcome(done=True, note="serverless endpoints scale themselves")
        target, policy = autoscaling_requests(run)
        self._autoscaling.register_scalable_target(**target)
        self._autoscaling.put_scaling_policy(**policy)
        target_value = policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"]
        return Outcome(done=True, note=f"target tracking {target_value:g} invocations per instance")

    def create_drift_alarms(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, CreateDriftAlarms)
        alarms = monitoring_alarm_requests(run)
        for alarm in alarms:
            self._cloudwatch.put_metric_alarm(**alarm)  # PutMetricAlarm replaces: a repeat is harmless
        return Outcome(
            done=True, note=f"{len(alarms)} drift/quality alarm(s): {', '.join(a['AlarmName'] for a in alarms)}"
        )

    def delete_endpoint(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, DeleteEndpoint)
        try:
            self._sagemaker.delete_endpoint(EndpointName=command.endpoint_name)
        except ClientError as exc:
            if not _missing(exc):
                raise
        alarms = [a["AlarmName"] for a in monitoring_alarm_requests(run)]
        if alarms:
            self._cloudwatch.delete_alarms(AlarmNames=alarms)
        return Outcome(done=True, note=f"deleted {command.endpoint_name} and its drift alarms")

    def retire_deployment(self, command: Command, run: Run) -> Outcome:
        """Delete the run's endpoint config, model and alarms; what is already gone is fine."""
        assert isinstance(command, RetireDeployment)
        deleted = []
        for operation, key, name in (
            ("delete_endpoint_config", "EndpointConfigName", endpoint_config_name(run)),
            ("delete_model", "ModelName", model_name(run)),
        ):
            try:
                getattr(self._sagemaker, operation)(**{key: name})
                deleted.append(name)
            except ClientError as exc:
                if not _missing(exc):
                    raise
        alarms = [a["AlarmName"] for a in (*monitoring_alarm_requests(run), *rollback_alarm_requests(run))]
        self._cloudwatch.delete_alarms(AlarmNames=alarms)  # names that do not exist are ignored
        return Outcome(done=True, note=f"deleted {', '.join(deleted) or 'nothing left'} and {len(alarms)} alarm(s)")
