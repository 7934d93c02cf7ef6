"""SageMaker: the requests tuneloop's job commands become, and their executors.

Request builders are pure functions of (command, run, settings), so tests can compare
them with botocore's model and with what they expect. Executors take the boto3 client
in their constructor (a client pointed at SageMaker, or at the local SageMaker server).
Re-running a command finds ``ResourceInUse`` (names are deterministic) and counts as done.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from .config import Settings
from .domain.commands import (
    Command,
    LoadEvaluation,
    RegisterModelPackage,
    StartProcessingJob,
    StartTrainingJob,
    StopJob,
    UpdateModelPackageApproval,
)
from .domain.events import EvaluationLoaded
from .domain.run import Run
from .events import PROJECT_TAG, RUN_ID_TAG
from .executors import Outcome, PermanentCommandError

PROCESSING_ROOT = "/opt/ml/processing"
PREPARE_OUTPUTS = ("train", "validation", "test", "profile", "report")
TRAINING_METRICS = (
    "epoch",
    "step",
    "train_loss",
    "learning_rate",
    "samples_per_second",
    "tokens_per_second",
    "validation_loss",
    "validation_accuracy",
    "validation_macro_f1",
    "validation_perplexity",
)
# train.py prints "[metric] epoch=1 step=40 train_loss=0.4123 ..."; one regex per metric.
METRIC_DEFINITIONS = [{"Name": name, "Regex": rf"\[metric\].* {name}=([-+0-9.eE]+)"} for name in TRAINING_METRICS]


class NotConfiguredError(PermanentCommandError):
    """A setting the job needs is missing (role, image, code location)."""


def _require(value: str | None, what: str) -> str:
    if not value:
        raise NotConfiguredError(f"{what} is not configured (see `tuneloop configure`)")
    return value


def run_prefix(settings: Settings, run_id: str) -> str:
    return f"s3://{settings.bucket}/runs/{run_id}"


def tags(command: Command) -> list[dict[str, str]]:
    return [
        {"Key": RUN_ID_TAG, "Value": command.run_id},
        {"Key": PROJECT_TAG, "Value": getattr(command, "project", "")},
    ]


def dataset_input(uri: str) -> str:
    """A manifest names its folder; a single data file is its own prefix."""
    if uri.endswith("/manifest.json"):
        return posixpath.dirname(uri) + "/"
    return uri


def _vpc(settings: Settings) -> dict[str, Any] | None:
    if settings.subnets and settings.security_groups:
        return {"Subnets": list(settings.subnets), "SecurityGroupIds": list(settings.security_groups)}
    return None


def _processing_input(name: str, uri: str, local: str) -> dict[str, Any]:
    source = {"S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix", "S3InputMode": "File"}
    return {"InputName": name, "S3Input": source}


def _processing_output(name: str, uri: str) -> dict[str, Any]:
    target = {"S3Uri": uri, "LocalPath": f"{PROCESSING_ROOT}/output/{name}", "S3UploadMode": "EndOfJob"}
    return {"OutputName": name, "S3Output": target}


def _processing_job(
    command: StartProcessingJob,
    settings: Settings,
    image: str,
    script: str,
    arguments: list[str],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
) -> dict[str, Any]:
    """What every tuneloop processing job shares: role, code input, resources, KMS, VPC, tags."""
    code = _require(settings.code_uri, "the training code location") + "/source/"
    app: dict[str, Any] = {
        "ImageUri": image,
        "ContainerEntrypoint": ["python3", f"{PROCESSING_ROOT}/input/code/{script}"],
    }
    if arguments:
        app["ContainerArguments"] = arguments
    cluster: dict[str, Any] = {
        "InstanceCount": 1,
        "InstanceType": settings.processing_instance_type,
        "VolumeSizeInGB": 30,
    }
    request: dict[str, Any] = {
        "ProcessingJobName": command.job_name,
        "RoleArn": _require(settings.role_arn, "the SageMaker execution role"),
        "AppSpecification": app,
        "ProcessingInputs": [_processing_input("code", code, f"{PROCESSING_ROOT}/input/code"), *inputs],
        "ProcessingOutputConfig": {"Outputs": outputs},
        "ProcessingResources": {"ClusterConfig": cluster},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Tags": tags(command),
    }
    if settings.kms_key_id:
        request["ProcessingOutputConfig"]["KmsKeyId"] = settings.kms_key_id
        cluster["VolumeKmsKeyId"] = settings.kms_key_id
    vpc = _vpc(settings)
    if vpc:
        request["NetworkConfig"] = {"VpcConfig": vpc, "EnableNetworkIsolation": False}
    return request


def prepare_request(command: StartProcessingJob, run: Run, settings: Settings) -> dict[str, Any]:
    outputs = run_prefix(settings, run.run_id) + "/prepare"
    return _processing_job(
        command,
        settings,
        image=_require(settings.processing_image, "the processing image"),
        script="prepare.py",
        arguments=["--task", run.config["task"], "--data-format", run.config["data_format"]],
        inputs=[_processing_input("data", dataset_input(command.input_uri), f"{PROCESSING_ROOT}/input/data")],
        outputs=[_processing_output(name, f"{outputs}/{name}/") for name in PREPARE_OUTPUTS],
    )


def model_artifact_uri(settings: Settings, run: Run, training_job: str) -> str:
    """Where a training job of this run wrote model.tar.gz (OutputDataConfig + job name)."""
    return f"{run_prefix(settings, run.run_id)}/train/{training_job}/output/model.tar.gz"


def evaluation_prefix(settings: Settings, run_id: str) -> str:
    return f"{run_prefix(settings, run_id)}/evaluate/evaluation/"


def evaluate_request(command: StartProcessingJob, run: Run, settings: Settings) -> dict[str, Any]:
    """The evaluate job: the trained model on the test split, in the inference image, the
    stack that will serve it (torch and transformers, CPU)."""
    prefix = run_prefix(settings, run.run_id)
    return _processing_job(
        command,
        settings,
        image=_require(settings.inference_image, "the inference image"),
        script="evaluate.py",
        arguments=[],
        inputs=[
            _processing_input(
                "model", model_artifact_uri(settings, run, command.input_uri), f"{PROCESSING_ROOT}/input/model"
            ),
            _processing_input("test", f"{prefix}/prepare/test/", f"{PROCESSING_ROOT}/input/test"),
        ],
        outputs=[_processing_output("evaluation", evaluation_prefix(settings, run.run_id))],
    )


def hyperparameters(run: Run, settings: Settings) -> dict[str, str]:
    """Strings only, keys dashed (train.py also accepts underscores); the toolkit's own keys JSON-encoded."""
    config = run.config
    training = config["training"]
    values: dict[str, Any] = {
        "task": config["task"],
        "base-model": config["base_model"],
        "method": training["method"],
        **{str(k).replace("_", "-"): v for k, v in training["hyperparameters"].items()},
    }
    out = {k: ("True" if v is True else "False" if v is False else str(v)) for k, v in values.items()}
    out["sagemaker_program"] = '"train.py"'
    out["sagemaker_submit_directory"] = (
        f'"{_require(settings.code_uri, "the training code location")}/sourcedir.tar.gz"'
    )
    out["sagemaker_region"] = f'"{settings.region}"'
    if training["instance_count"] > 1 or training["instance_type"].startswith(GPU_FAMILIES):
        # torchrun over every GPU of every instance (one process on a single-GPU instance).
        out["sagemaker_torch_distributed_enabled"] = "true"
    return out


GPU_FAMILIES = ("ml.g", "ml.p", "ml.trn", "ml.inf")


def training_image(settings: Settings, instance_type: str) -> str:
    """The GPU image for GPU instances; the CPU build, where configured, for the rest."""
    if not instance_type.startswith(GPU_FAMILIES) and settings.training_image_cpu:
        return settings.training_image_cpu
    return _require(settings.training_image, "the training image")


def channel(name: str, uri: str) -> dict[str, Any]:
    source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
    return {"ChannelName": name, "DataSource": {"S3DataSource": source}, "InputMode": "File"}


def training_request(command: StartTrainingJob, run: Run, settings: Settings) -> dict[str, Any]:
    config = run.config
    training = config["training"]
    prefix = run_prefix(settings, run.run_id)
    channels = [
        {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": f"{prefix}/prepare/{name}/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "InputMode": "File",
        }
        for name in ("train", "validation")
    ]
    if config["base_model"].startswith("s3://"):
        channels.append(
            {
                "ChannelName": "model",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": config["base_model"],
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
        )
    request: dict[str, Any] = {
        "TrainingJobName": command.job_name,
        "HyperParameters": hyperparameters(run, settings),
        "AlgorithmSpecification": {
            "TrainingImage": training_image(settings, training["instance_type"]),
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "RoleArn": _require(settings.role_arn, "the SageMaker execution role"),
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": f"{prefix}/train/"},
        "ResourceConfig": {
            "InstanceType": training["instance_type"],
            "InstanceCount": training["instance_count"],
            "VolumeSizeInGB": training["volume_size_gb"],
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": training["max_runtime_s"]},
        "EnableManagedSpotTraining": bool(training["spot"]),
        # One checkpoint location for every attempt: a retry after a spot interruption
        # resumes where the interrupted attempt stopped.
        "CheckpointConfig": {"S3Uri": f"{prefix}/checkpoints/", "LocalPath": "/opt/ml/checkpoints"},
        "Tags": tags(command),
    }
    if training["spot"]:
        request["StoppingCondition"]["MaxWaitTimeInSeconds"] = training["max_wait_s"]
    if settings.kms_key_id:
        request["OutputDataConfig"]["KmsKeyId"] = settings.kms_key_id
        request["ResourceConfig"]["VolumeKmsKeyId"] = settings.kms_key_id
    vpc = _vpc(settings)
    if vpc:
        request["VpcConfig"] = vpc
    return request


_STOP = {
    "processing": ("stop_processing_job", "ProcessingJobName"),
    "training": ("stop_training_job", "TrainingJobName"),
    "tuning": ("stop_hyper_parameter_tuning_job", "HyperParameterTuningJobName"),
    "transform": ("stop_transform_job", "TransformJobName"),
}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def package_group(project: str) -> str:
    return f"tl-{project}"


def model_package_request(command: RegisterModelPackage, run: Run, settings: Settings) -> dict[str, Any]:
    """A model package version with its metrics and lineage; ClientToken makes a repeat a no-op."""
    metadata = {RUN_ID_TAG: run.run_id, PROJECT_TAG: run.project, "tuneloop:dataset": run.dataset_uri}
    if run.parent_run_id:
        metadata["tuneloop:parent-run-id"] = run.parent_run_id
    evaluation = evaluation_prefix(settings, run.run_id)
    request: dict[str, Any] = {
        "ModelPackageGroupName": package_group(run.project),
        "ModelPackageDescription": f"tuneloop run {run.run_id} of {run.project}: {run.config['base_model']}",
        "InferenceSpecification": {
            "Containers": [
                {
                    "Image": _require(settings.inference_image, "the inference image"),
                    "ModelDataUrl": model_artifact_uri(settings, run, command.model_source),
                    "Environment": {"SAGEMAKER_PROGRAM": "inference.py"},
                }
            ],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "ModelApprovalStatus": command.approval_status,
        "ModelMetrics": {
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": evaluation + "evaluation.json"}}
        },
        "CustomerMetadataProperties": metadata,
        "ClientToken": f"tuneloop-{run.run_id}",
    }
    return request


class EvaluationLoader:
    """LoadEvaluation: read the evaluate job's evaluation.json and feed it back as an event."""

    def __init__(self, s3: Any, settings: Settings) -> None:
        self._s3 = s3
        self._settings = settings

    def load(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, LoadEvaluation)
        uri = evaluation_prefix(self._settings, run.run_id) + "evaluation.json"
        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise PermanentCommandError(f"the evaluate job wrote no {uri}") from exc
            raise
        try:
            evaluation = json.loads(body)
            metrics = {str(k): float(v) for k, v in evaluation["summary"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentCommandError(f"{uri} is not an evaluation tuneloop can read: {exc}") from exc
        champion = evaluation.get("champion") or None
        event = EvaluationLoaded(
            event_id=f"evaluation-{command.job_name}",
            time=datetime.now(UTC),
            run_id=run.run_id,
            metrics=metrics,
            champion_metrics={str(k): float(v) for k, v in champion.items()} if champion else None,
        )
        return Outcome(done=True, note=f"read {uri}", events=(event,))


class SageMakerExecutors:
    """CreateProcessingJob / CreateTrainingJob / Stop*: one boto3 SageMaker client."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    def _create(self, operation: str, request: Mapping[str, Any]) -> Outcome:
        try:
            getattr(self._client, operation)(**request)
        except ClientError as exc:
            code = _code(exc)
            if code == "ResourceInUse":
                return Outcome(done=True, note="already created (a repeat of this command)")
            if code in ("ValidationException", "ResourceLimitExceeded", "AccessDeniedException"):
                raise PermanentCommandError(f"{operation}: {code}: {exc.response['Error'].get('Message', '')}") from exc
            raise
        return Outcome(done=True, note=f"{operation} sent")

    def start_processing_job(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, StartProcessingJob)
        builders = {"prepare": prepare_request, "evaluate": evaluate_request}
        if command.step not in builders:
            raise PermanentCommandError(f"no processing job is defined for step {command.step!r}")
        return self._create("create_processing_job", builders[command.step](command, run, self._settings))

    def start_training_job(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, StartTrainingJob)
        return self._create("create_training_job", training_request(command, run, self._settings))

    def register_model_package(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, RegisterModelPackage)
        group = package_group(run.project)
        try:
            self._client.create_model_package_group(
                ModelPackageGroupName=group,
                ModelPackageGroupDescription=f"tuneloop project {run.project}",
                Tags=tags(command),
            )
        except ClientError as exc:
            # The group is made once per project; later runs find it there.
            if _code(exc) not in ("ResourceInUse", "ValidationException") or "exist" not in str(exc).lower():
                raise
        return self._create("create_model_package", model_package_request(command, run, self._settings))

    def update_model_package_approval(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, UpdateModelPackageApproval)
        if not command.package_arn:
            raise PermanentCommandError("the run has no model package to approve or reject")
        self._client.update_model_package(
            ModelPackageArn=command.package_arn,
            ModelApprovalStatus="Approved" if command.approved else "Rejected",
            ApprovalDescription=(command.reason or "decided through tuneloop")[:1024],
        )
        return Outcome(done=True, note=f"package {'approved' if command.approved else 'rejected'}")

    def stop_job(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, StopJob)
        operation, key = _STOP[command.job_type]
        try:
            getattr(self._client, operation)(**{key: command.job_name})
        except ClientError as exc:
            # Stopping a job that never started, or already ended, leaves nothing to stop.
            if _code(exc) in ("ValidationException", "ResourceNotFound"):
                return Outcome(done=True, note=f"nothing to stop: {exc.response['Error'].get('Message', '')}")
            raise
        return Outcome(done=True, note=f"{operation} sent")
