"""SageMaker: the requests tuneloop's job commands become, and their executors.

Request builders are pure functions of (command, run, settings), so tests can compare
them with botocore's model and with what they expect. Executors take the boto3 client
in their constructor (a client pointed at SageMaker, or at the local SageMaker server).
Re-running a command finds ``ResourceInUse`` (names are deterministic) and counts as done.
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from . import spec
from .config import Settings
from .domain import names
from .domain.commands import (
    Command,
    DescribeTuningJob,
    LoadEvaluation,
    RegisterModelPackage,
    StartProcessingJob,
    StartTrainingJob,
    StartTuningJob,
    StopJob,
    UpdateModelPackageApproval,
)
from .domain.events import Comparison, EvaluationLoaded, TuningJobChanged
from .domain.project import TRAINING_METRICS
from .domain.run import Run
from .domain.waits import EVALUATION_MAX_RUNTIME_S, PROCESSING_MAX_RUNTIME_S
from .events import PROJECT_TAG, RUN_ID_TAG, TUNING, MalformedEventError, parse_described
from .executors import Outcome, PermanentCommandError
from .feedback import labels_prefix
from .observability import logger

PROCESSING_ROOT = "/opt/ml/processing"
PREPARE_OUTPUTS = ("train", "validation", "test", "profile", "report")
METRIC_DEFINITIONS = [{"Name": name, "Regex": rf"\[metric\].* {name}=([-+0-9.eE]+)"} for name in TRAINING_METRICS]


class NotConfiguredError(PermanentCommandError):
    """A setting the job needs is missing (role, image, code location)."""


def _require(value: str | None, what: str) -> str:
    if not value:
        raise NotConfiguredError(f"{what} is not configured (see `tuneloop configure`)")
    return value


def run_prefix(settings: Settings, run_id: str) -> str:
    return f"s3://{settings.bucket}/runs/{run_id}"


def run_tags(run_id: str, project: str) -> list[dict[str, str]]:
    return [{"Key": RUN_ID_TAG, "Value": run_id}, {"Key": PROJECT_TAG, "Value": project}]


def tags(command: Command) -> list[dict[str, str]]:
    return run_tags(command.run_id, getattr(command, "project", ""))


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
    instance_type: str | None = None,
    max_runtime_s: int = PROCESSING_MAX_RUNTIME_S,
) -> dict[str, Any]:
    """What every tuneloop processing job shares: role, code input, resources, KMS, VPC,
    tags; on the stage's processing instance unless ``instance_type`` says."""
    code = _require(settings.code_uri, "the training code location") + "/source/"
    app: dict[str, Any] = {
        "ImageUri": image,
        "ContainerEntrypoint": ["python3", f"{PROCESSING_ROOT}/input/code/{script}"],
    }
    if arguments:
        app["ContainerArguments"] = arguments
    cluster: dict[str, Any] = {
        "InstanceCount": 1,
        "InstanceType": instance_type or settings.processing_instance_type,
        "VolumeSizeInGB": 30,
    }
    request: dict[str, Any] = {
        "ProcessingJobName": command.job_name,
        "RoleArn": _require(settings.role_arn, "the SageMaker execution role"),
        "AppSpecification": app,
        "ProcessingInputs": [_processing_input("code", code, f"{PROCESSING_ROOT}/input/code"), *inputs],
        "ProcessingOutputConfig": {"Outputs": outputs},
        "ProcessingResources": {"ClusterConfig": cluster},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_s},
        "Tags": tags(command),
    }
    if settings.kms_key_id:
        request["ProcessingOutputConfig"]["KmsKeyId"] = settings.kms_key_id
        cluster["VolumeKmsKeyId"] = settings.kms_key_id
    vpc = _vpc(settings)
    if vpc:
        request["NetworkConfig"] = {"VpcConfig": vpc, "EnableNetworkIsolation": False}
    return request


# CreateProcessingJob takes at most 256 ContainerArguments of at most 256 characters each.
MAX_ARGUMENT_CHARS = 256


def generation_arguments(generation: Mapping[str, Any]) -> list[str]:
    """``--generation=<piece>`` container arguments: the settings' JSON (a schema can run to
    thousands of characters) in pieces that fit MAX_ARGUMENT_CHARS with the flag, which the
    jobs join (spec.GENERATION_MAX_CHARS keeps it within the 100 arguments a job takes). In
    one argument with its flag, a piece that starts with "-" is not read as an option."""
    text = json.dumps(generation, separators=(",", ":"))
    flag = "--generation="
    size = MAX_ARGUMENT_CHARS - len(flag)
    return [flag + text[start : start + size] for start in range(0, len(text), size)]


MAX_EXCLUDED = 100


def excludable(data: str, skipped: Sequence[tuple[str, str]]) -> list[str]:
    """The skipped datasets as prepare.py's ``--exclude`` paths, as many as SageMaker's
    argument limits allow (the rest are read, and fail the run again, with their reason)."""
    paths = [dataset_input(uri)[len(data) :] for uri, _ in skipped]
    return [p for p in paths if len(p) <= MAX_ARGUMENT_CHARS][:MAX_EXCLUDED]


def holdout_prefix(settings: Settings, project: str) -> str:
    """The project's frozen holdout: one ``<run>.keys`` file per run that added test rows."""
    return f"s3://{settings.bucket}/holdout/{project}/"


def prepare_request(
    command: StartProcessingJob,
    run: Run,
    settings: Settings,
    holdout: bool = False,
    skipped: Sequence[tuple[str, str]] = (),
    production: bool = False,
) -> dict[str, Any]:
    """The prepare job: validate, split by the project's frozen holdout (``holdout``: the
    prefix has keys already; SageMaker refuses an empty input prefix), profile. A
    retraining run reads every dataset under the project's prefix but the ``skipped`` ones."""
    outputs = run_prefix(settings, run.run_id) + "/prepare"
    split = run.config["split"]
    arguments = [
        "--task", run.config["task"],
        "--data-format", run.config["data_format"],
        "--seed", str(split["seed"]),
        "--validation-fraction", str(split["validation"]),
        "--test-fraction", str(split["test"]),
        "--min-per-class", str(split["min_per_class"]),
        "--run-id", run.run_id,
    ]  # fmt: skip
    # Where each row's fields are, when the project names other columns or keys.
    for key, name in (run.config.get("data") or {}).items():
        if name != key.removesuffix("_field"):
            arguments += [f"--{key.replace('_', '-')}", name]
    data = dataset_input(command.input_uri)
    for path in excludable(data, skipped):
        arguments += ["--exclude", path]
    inputs = [_processing_input("data", data, f"{PROCESSING_ROOT}/input/data")]
    if holdout:
        inputs.append(
            _processing_input("holdout", holdout_prefix(settings, run.project), f"{PROCESSING_ROOT}/input/holdout")
        )
    if production:
        # A retraining run learns from the labelled production traffic: the project's
        # captured requests joined with the labels that arrived for them.
        inputs += [
            _processing_input(
                "capture", f"{capture_uri(settings, run.project)}/", f"{PROCESSING_ROOT}/input/production/capture"
            ),
            _processing_input(
                "labels", labels_uri(settings, run.project), f"{PROCESSING_ROOT}/input/production/labels"
            ),
        ]
        arguments += ["--production-dir", f"{PROCESSING_ROOT}/input/production"]
    return _processing_job(
        command,
        settings,
        image=_require(settings.processing_image, "the processing image"),
        script="prepare.py",
        arguments=arguments,
        inputs=inputs,
        outputs=[
            *(_processing_output(name, f"{outputs}/{name}/") for name in PREPARE_OUTPUTS),
            _processing_output("holdout", holdout_prefix(settings, run.project)),
        ],
    )


def capture_uri(settings: Settings, project: str) -> str:
    """Everything captured for the project: its endpoint's requests and its transforms'."""
    return f"s3://{settings.bucket}/capture/{project}"


def run_capture_uri(bucket: str, run: Run) -> str:
    """Where an endpoint config of ``run`` captures the requests its model answers, so a
    model is measured only on requests it answered."""
    return f"s3://{bucket}/capture/{run.project}/{run.run_id}"


def labels_uri(settings: Settings, project: str) -> str:
    """Where the feedback doors store the labels that arrived for captured requests."""
    return f"s3://{settings.bucket}/{labels_prefix(project)}"


def model_artifact_uri(settings: Settings, run: Run, training_job: str) -> str:
    """Where a training job of this run wrote model.tar.gz (OutputDataConfig + job name)."""
    return f"{run_prefix(settings, run.run_id)}/train/{training_job}/output/model.tar.gz"


BASE_CHANNEL = "base"  # inference.BASE_CHANNEL: where an adapter's base model arrives


def adapter_base_uri(run: Run) -> str | None:
    """The s3:// base model a run's LoRA adapter is served on; None when the run writes a
    merged model, or its base ships in a package (the endpoint has it)."""
    training = run.config.get("training") or {}
    if training.get("artifact") == "adapter" and run.config["base_model"].startswith("s3://"):
        return str(run.config["base_model"])
    return None


def base_model_sources(run: Run, etag: str | None = None) -> list[dict[str, Any]]:
    """AdditionalModelDataSources of a run's model: its adapter's base, if it has one
    (a model.tar.gz, unpacked by SageMaker, or a prefix of the model's files); ``etag``
    pins the archive, as ModelDataETag pins the adapter."""
    uri = adapter_base_uri(run)
    if uri is None:
        return []
    if uri.endswith(".tar.gz"):
        source: dict[str, Any] = {"S3Uri": uri, "S3DataType": "S3Object", "CompressionType": "Gzip"}
        if etag:
            source["ETag"] = etag
    else:
        source = {"S3Uri": uri.rstrip("/") + "/", "S3DataType": "S3Prefix", "CompressionType": "None"}
    return [{"ChannelName": BASE_CHANNEL, "S3DataSource": source}]


def evaluation_prefix(settings: Settings, run_id: str) -> str:
    return f"{run_prefix(settings, run_id)}/evaluate/evaluation/"


# How long an evaluate job may take: a start (image, model download and load) and, per
# test row and model measured, a classifier's forward pass or a causal LM's generation of
# max_new_tokens tokens. Generous on purpose (a 1B model on a CPU instance generates a few
# tokens a second): the limit stops a job that hangs, not one that is merely slow.
EVALUATION_START_S = 900
EVALUATION_ROW_S = {"cpu": 0.5, "gpu": 0.05}
EVALUATION_TOKEN_S = {"cpu": 1.0, "gpu": 0.1}


def evaluation_instance(run: Run, settings: Settings) -> str:
    """Where the run's model is evaluated: the project's evaluation.instance_type; else a
    causal LM trained on a GPU instance is evaluated on that instance type (it generates
    for every test prompt, three times), and the rest on the stage's processing instance."""
    evaluation = run.config.get("evaluation") or {}
    if evaluation.get("instance_type"):
        return str(evaluation["instance_type"])
    trained_on = str(run.config["training"]["instance_type"])
    if run.config["task"] == "causal-lm" and trained_on.startswith(spec.GPU_INSTANCE_FAMILIES):
        return trained_on
    return settings.processing_instance_type


def _cuda(instance_type: str) -> bool:
    """Whether the evaluate job runs on an NVIDIA GPU (the inference image's GPU build)."""
    return instance_type.startswith(spec.GPU_INSTANCE_FAMILIES)


def models_measured(run: Run, champion: Run | None) -> int:
    """Models the evaluate job runs over the test split: the run's, the deployed champion's
    when it is compared, and a causal LM's untuned base when the baseline is."""
    gates = run.config["gates"]
    compared = champion is not None and bool(champion.model_source) and gates["compare_champion"]
    base = run.config["task"] == "causal-lm" and gates.get("compare_baseline", True)
    return 1 + int(compared) + int(base)


def evaluation_runtime_s(run: Run, settings: Settings, test_rows: int | None, models: int = 1) -> tuple[int, str]:
    """The evaluate job's MaxRuntimeInSeconds and why: the project's evaluation.max_runtime_s;
    else what ``test_rows`` need on the instance for ``models`` (EVALUATION_START_S,
    EVALUATION_ROW_S, EVALUATION_TOKEN_S), at least 2 × EVALUATION_START_S, within
    EVALUATION_MAX_RUNTIME_S and the stage's runtime limit (which win); the most those
    allow when the size is unknown."""
    ceiling = min(EVALUATION_MAX_RUNTIME_S, settings.limits.max_runtime_s)
    evaluation = run.config.get("evaluation") or {}
    if evaluation.get("max_runtime_s"):
        return int(evaluation["max_runtime_s"]), "evaluation.max_runtime_s"
    if test_rows is None:
        return ceiling, "test split's size unknown: the most allowed"
    kind = "gpu" if _cuda(evaluation_instance(run, settings)) else "cpu"
    causal = run.config["task"] == "causal-lm"
    per_row = (
        EVALUATION_TOKEN_S[kind] * int(run.config["generation"]["max_new_tokens"]) if causal else EVALUATION_ROW_S[kind]
    )
    needed = EVALUATION_START_S + math.ceil(test_rows * models * per_row)
    limit = min(max(2 * EVALUATION_START_S, needed), ceiling)
    why = f"{test_rows} test rows, {models} model{'s' if models > 1 else ''} on {kind.upper()}"
    return limit, why if needed <= ceiling else f"{why} need about {needed} s: capped at {ceiling} s"


def evaluate_request(
    command: StartProcessingJob,
    run: Run,
    settings: Settings,
    champion: Run | None = None,
    test_rows: int | None = None,
) -> dict[str, Any]:
    """The evaluate job: the trained model on the test split, in the inference image, the
    stack that will serve it (torch and transformers; its GPU build on a GPU instance:
    evaluation_instance), for as long as ``test_rows`` need (evaluation_runtime_s). With a
    deployed champion, its model is measured on the same split, for the gate's
    champion/challenger comparison; without one, a trivial baseline is (the majority
    class); a causal LM's untuned base is measured on every evaluation."""
    prefix = run_prefix(settings, run.run_id)
    inputs = [
        _processing_input(
            "model", model_artifact_uri(settings, run, command.input_uri), f"{PROCESSING_ROOT}/input/model"
        ),
        _processing_input("test", f"{prefix}/prepare/test/", f"{PROCESSING_ROOT}/input/test"),
        _processing_input("report", f"{prefix}/prepare/report/", f"{PROCESSING_ROOT}/input/report"),
        # The training split's label counts: the majority-class baseline a first model must beat.
        _processing_input("profile", f"{prefix}/prepare/profile/", f"{PROCESSING_ROOT}/input/profile"),
        *_base_input("base", run),
    ]
    gates = run.config["gates"]
    arguments = [
        "--run-id", run.run_id,
        "--dataset", run.dataset_uri[-MAX_ARGUMENT_CHARS:],  # for the report; S3 keys run to 1,024
        "--primary-metric", gates["primary_metric"],
        "--confidence", str(gates["confidence"]),
    ]  # fmt: skip
    if run.config["task"] == "causal-lm":
        # How the test prompts are generated for and scored (the schema and regex go along).
        arguments += generation_arguments(run.config["generation"])
    if champion is not None and not champion.model_source:
        champion = None
    if champion is not None and champion.model_source and gates["compare_champion"]:
        champion_model = model_artifact_uri(settings, champion, champion.model_source)
        inputs.append(_processing_input("champion", champion_model, f"{PROCESSING_ROOT}/input/champion"))
        inputs += _base_input("champion-base", champion)
        arguments += ["--champion-run-id", champion.run_id]
    if gates.get("compare_baseline", True) and (champion is None or run.config["task"] == "causal-lm"):
        # A first model is measured against a trivial baseline: the majority class (from the
        # profile); a causal LM, on every evaluation, against its untuned base (an adapter's
        # comes as input/base; the s3:// model it was fine-tuned from in full, as input/untuned).
        arguments.append("--baseline")
        if (
            run.config["task"] == "causal-lm"
            and run.config["base_model"].startswith("s3://")
            and not adapter_base_uri(run)
        ):
            inputs.append(_processing_input("untuned", run.config["base_model"], f"{PROCESSING_ROOT}/input/untuned"))
    instance_type = evaluation_instance(run, settings)
    if _cuda(instance_type):
        image = _require(settings.inference_image_gpu, f"the inference image's GPU build (for {instance_type})")
    else:
        image = _require(settings.inference_image, "the inference image")
    return _processing_job(
        command,
        settings,
        image=image,
        script="evaluate.py",
        arguments=arguments,
        inputs=inputs,
        outputs=[_processing_output("evaluation", evaluation_prefix(settings, run.run_id))],
        instance_type=instance_type,
        max_runtime_s=evaluation_runtime_s(run, settings, test_rows, models_measured(run, champion))[0],
    )


def _base_input(name: str, run: Run) -> list[dict[str, Any]]:
    """A processing input with the base model of a run's adapter (none for other models)."""
    uri = adapter_base_uri(run)
    return [_processing_input(name, uri, f"{PROCESSING_ROOT}/input/{name}")] if uri else []


def drift_request(command: StartProcessingJob, run: Run, settings: Settings, labels: bool = False) -> dict[str, Any]:
    """The drift check of a deployed run: the traffic its model answered (``command.input_uri``,
    the run's own capture prefix) against its training data, measured with its own model; with ``labels`` (the project
    has feedback; SageMaker refuses an empty input prefix), production quality too.
    Metrics go to CloudWatch."""
    prefix = run_prefix(settings, run.run_id)
    drift = run.config["drift"]
    quality = run.config.get("quality") or {"thresholds": {}, "min_labels": spec.MIN_LABELS}
    extra = [_processing_input("labels", labels_uri(settings, run.project), f"{PROCESSING_ROOT}/input/labels")]
    return _processing_job(
        command,
        settings,
        image=_require(settings.inference_image, "the inference image"),
        script="drift.py",
        arguments=[
            "--project",
            run.project,
            "--endpoint",
            names.endpoint_name(run.project, stage=run.stage),
            "--run-id",
            run.run_id,
            "--thresholds",
            json.dumps(drift["thresholds"], sort_keys=True),
            "--window-minutes",
            str(drift["schedule_minutes"]),
            "--quality-thresholds",
            json.dumps(quality["thresholds"], sort_keys=True),
            "--min-labels",
            str(quality["min_labels"]),
            "--region",
            settings.region,
            "--task",
            run.config["task"],
            # A language model's answers are scored against their corrections as its tests are.
            *(generation_arguments(run.config["generation"]) if run.config["task"] == "causal-lm" else []),
        ],
        inputs=[
            _processing_input("profile", f"{prefix}/prepare/profile/", f"{PROCESSING_ROOT}/input/baseline/profile"),
            _processing_input("train", f"{prefix}/prepare/train/", f"{PROCESSING_ROOT}/input/baseline/train"),
            _processing_input("capture", command.input_uri, f"{PROCESSING_ROOT}/input/capture"),
            _processing_input(
                "model",
                model_artifact_uri(settings, run, _require(run.model_source, "the deployed model")),
                f"{PROCESSING_ROOT}/input/model",
            ),
            *_base_input("base", run),
            *(extra if labels else []),
        ],
        outputs=[_processing_output("drift", f"{prefix}/drift/{command.job_name}/")],
    )


def hyperparameters(run: Run, settings: Settings) -> dict[str, str]:
    """Strings only, keys dashed (train.py also accepts underscores); the toolkit's own keys JSON-encoded."""
    config = run.config
    training = config["training"]
    values: dict[str, Any] = {
        # Only train.py's declared hyperparameters, and the system's keys last: a stored
        # config can never name the model, the task or a path (config validation refuses
        # those too).
        **{hyperparameter_name(k): v for k, v in training["hyperparameters"].items() if k in spec.HYPERPARAMETERS},
        "task": config["task"],
        "base-model": config["base_model"],
        "method": training["method"],
        "artifact": training.get("artifact", "merged"),  # runs stored before the field: merged
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


def training_definition(run: Run, settings: Settings) -> dict[str, Any]:
    """What a training job and a tuning job's TrainingJobDefinition share: image, metric
    definitions, channels, resources, limits, spot and checkpoints, KMS and VPC."""
    config = run.config
    training = config["training"]
    prefix = run_prefix(settings, run.run_id)
    channels = [channel(name, f"{prefix}/prepare/{name}/") for name in ("train", "validation")]
    if config["base_model"].startswith("s3://"):
        channels.append(channel("model", config["base_model"]))
    definition: dict[str, Any] = {
        "AlgorithmSpecification": {
            "TrainingImage": training_image(settings, training["instance_type"]),
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": _require(settings.role_arn, "the SageMaker execution role"),
        "InputDataConfig": channels,
        # Trials of a tuning job write here too: <output>/<job name>/output/model.tar.gz.
        "OutputDataConfig": {"S3OutputPath": f"{prefix}/train/"},
        "ResourceConfig": {
            "InstanceType": training["instance_type"],
            "InstanceCount": training["instance_count"],
            "VolumeSizeInGB": training["volume_size_gb"],
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": training["max_runtime_s"]},
        "EnableManagedSpotTraining": bool(training["spot"]),
        # One checkpoint location for every attempt: a retry after a spot interruption
        # resumes where the interrupted attempt stopped. train.py keeps each hyperparameter
        # set's checkpoints in a folder of its own, so a tuning job's trials never share them.
        # Under checkpoints/, which the bucket's lifecycle expires (they are only for resuming).
        "CheckpointConfig": {
            "S3Uri": f"s3://{settings.bucket}/checkpoints/{run.run_id}/",
            "LocalPath": "/opt/ml/checkpoints",
        },
    }
    if training["spot"]:
        definition["StoppingCondition"]["MaxWaitTimeInSeconds"] = training["max_wait_s"]
    if training.get("warm_pool_s"):  # a run stored before the field existed has none
        definition["ResourceConfig"]["KeepAlivePeriodInSeconds"] = training["warm_pool_s"]
    if settings.kms_key_id:
        definition["OutputDataConfig"]["KmsKeyId"] = settings.kms_key_id
        definition["ResourceConfig"]["VolumeKmsKeyId"] = settings.kms_key_id
    vpc = _vpc(settings)
    if vpc:
        definition["VpcConfig"] = vpc
    return definition


def training_request(command: StartTrainingJob, run: Run, settings: Settings) -> dict[str, Any]:
    definition = training_definition(run, settings)
    definition["AlgorithmSpecification"]["EnableSageMakerMetricsTimeSeries"] = True
    return {
        "TrainingJobName": command.job_name,
        "HyperParameters": hyperparameters(run, settings),
        **definition,
        "Tags": tags(command),
    }


def hyperparameter_name(key: str) -> str:
    return str(key).replace("_", "-")


def parameter_ranges(tuning: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The config's ranges as SageMaker's ParameterRanges (bounds are strings)."""
    out: dict[str, list[dict[str, Any]]] = {
        "IntegerParameterRanges": [],
        "ContinuousParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for key, bounds in sorted(tuning["ranges"].items()):
        name = hyperparameter_name(key)
        if bounds["type"] == "categorical":
            out["CategoricalParameterRanges"].append({"Name": name, "Values": list(bounds["values"])})
            continue
        integer = bounds["type"] == "integer"
        low, high = (int(bounds["min"]), int(bounds["max"])) if integer else (bounds["min"], bounds["max"])
        out["IntegerParameterRanges" if integer else "ContinuousParameterRanges"].append(
            {"Name": name, "MinValue": str(low), "MaxValue": str(high), "ScalingType": bounds["scaling"]}
        )
    return {k: v for k, v in out.items() if v}


def tuning_request(
    command: StartTuningJob, run: Run, settings: Settings, warm_start_parent: str | None = None
) -> dict[str, Any]:
    """CreateHyperParameterTuningJob. The training job definition is the one a single
    training job gets, spot and checkpoints included (tuners that drop them run on-demand)."""
    tuning = run.config["tuning"]
    tuned = {hyperparameter_name(k) for k in tuning["ranges"]}
    static = {k: v for k, v in hyperparameters(run, settings).items() if k not in tuned}
    definition = training_definition(run, settings)
    strategy = tuning["strategy"]
    config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {
            "Type": tuning["objective"]["type"],
            "MetricName": tuning["objective"]["metric"],
        },
        "ResourceLimits": {
            "MaxNumberOfTrainingJobs": tuning["max_jobs"],
            "MaxParallelTrainingJobs": tuning["max_parallel_jobs"],
        },
        "ParameterRanges": parameter_ranges(tuning),
        # Hyperband stops trials itself; SageMaker requires the median rule off with it.
        "TrainingJobEarlyStoppingType": "Off" if strategy == "Hyperband" else "Auto",
    }
    if strategy == "Hyperband":
        epochs = static.get("epochs")
        hyperband: dict[str, int] = {"MinResource": 1}
        if epochs == spec.AUTO:  # SageMaker cannot infer MaxResource from "auto": the most auto may choose
            hyperband["MaxResource"] = spec.AUTO_EPOCHS[1]
        elif epochs is not None:
            hyperband["MaxResource"] = max(1, int(float(epochs)))
        config["StrategyConfig"] = {"HyperbandStrategyConfig": hyperband}
    request: dict[str, Any] = {
        "HyperParameterTuningJobName": command.job_name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": {"StaticHyperParameters": static, **definition},
        "Tags": tags(command),
    }
    if warm_start_parent:
        request["WarmStartConfig"] = {
            "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": warm_start_parent}],
            # A retraining run tunes on new data: what transfers is where good values lie.
            "WarmStartType": "TransferLearning",
        }
    return request


_STOP = {
    "processing": ("stop_processing_job", "ProcessingJobName"),
    "training": ("stop_training_job", "TrainingJobName"),
    "tuning": ("stop_hyper_parameter_tuning_job", "HyperParameterTuningJobName"),
    "transform": ("stop_transform_job", "TransformJobName"),
}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def serving_image(settings: Settings, run: Run) -> str:
    """The image a run's model serves in: a causal LM's streams its answers (TorchServe,
    in SageMaker's PyTorch inference image), when one is configured; any other model's is
    the Hugging Face inference image."""
    if run.config["task"] == "causal-lm" and settings.streaming_image:
        return settings.streaming_image
    return _require(settings.inference_image, "the inference image")


def package_group(run: Run) -> str:
    """The project's model package group (named as its endpoint)."""
    return names.endpoint_name(run.project, stage=run.stage)


def model_package_request(
    command: RegisterModelPackage,
    run: Run,
    settings: Settings,
    model_etag: str | None = None,
    base_etag: str | None = None,
) -> dict[str, Any]:
    """A model package version with its metrics and lineage; ClientToken makes a repeat a no-op.
    ``model_etag`` pins the artifact: replacing model.tar.gz after approval cannot change
    what serves; ``base_etag`` pins an adapter's base model the same way."""
    metadata = {RUN_ID_TAG: run.run_id, PROJECT_TAG: run.project, "tuneloop:dataset": run.dataset_uri}
    if run.parent_run_id:
        metadata["tuneloop:parent-run-id"] = run.parent_run_id
    evaluation = evaluation_prefix(settings, run.run_id)
    request: dict[str, Any] = {
        "ModelPackageGroupName": package_group(run),
        "ModelPackageDescription": f"tuneloop run {run.run_id} of {run.project}: {run.config['base_model']}",
        "InferenceSpecification": {
            "Containers": [
                {
                    "Image": serving_image(settings, run),
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
    container = request["InferenceSpecification"]["Containers"][0]
    if model_etag:
        container["ModelDataETag"] = model_etag
    sources = base_model_sources(run, base_etag)
    if sources:
        container["AdditionalModelDataSources"] = sources
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
            event = evaluation_event(json.loads(body), f"evaluation-{command.job_name}", run.run_id)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PermanentCommandError(f"{uri} is not an evaluation tuneloop can read: {exc}") from exc
        return Outcome(done=True, note=f"read {uri}", events=(event,))


def approval_description(command: UpdateModelPackageApproval) -> str:
    """ "approved by <who>: <why>", within ApprovalDescription's 1,024 characters."""
    verdict = "approved" if command.approved else "rejected"
    who = f" by {command.approver}" if command.approver else ""
    return f"{verdict} through tuneloop{who}: {command.reason or 'no reason given'}"[:1024]


# What an evaluation's summary may hold: its numbers are kept in the run's item.
MAX_METRICS = 200
MAX_METRIC_NAME = 128


def _numbers(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} is {type(value).__name__}, not an object")
    if len(value) > MAX_METRICS:
        raise ValueError(f"{what} has {len(value)} metrics; at most {MAX_METRICS}")
    long = next((str(k) for k in value if len(str(k)) > MAX_METRIC_NAME), None)
    if long is not None:
        raise ValueError(f"{what} names a metric of {len(long)} characters; at most {MAX_METRIC_NAME}")
    return {str(k): float(v) for k, v in value.items() if not isinstance(v, bool)}


def evaluation_event(evaluation: Any, event_id: str, run_id: str) -> EvaluationLoaded:
    """evaluation.json as the gate's event; ValueError/TypeError/KeyError say what is wrong.
    Numbers may be NaN here: the gate, not the parser, refuses to promote on them."""
    if not isinstance(evaluation, Mapping):
        raise ValueError(f"the evaluation is {type(evaluation).__name__}, not an object")
    metrics = _numbers(evaluation["summary"], "summary")
    champion = _numbers(evaluation["champion"], "champion") if evaluation.get("champion") else None
    champion_run_id = evaluation.get("champion_run_id") if champion else None
    comparison, error = _comparison(evaluation.get("comparison") if champion else None)
    baseline, baseline_error = _comparison(evaluation.get("baseline"))
    return EvaluationLoaded(
        event_id=event_id,
        time=datetime.now(UTC),
        run_id=run_id,
        metrics=metrics,
        champion_metrics=champion,
        champion_run_id=str(champion_run_id) if champion_run_id else None,
        comparison=comparison,
        comparison_error=error,
        baseline=baseline,
        baseline_error=baseline_error,
    )


def _comparison(raw: Any) -> tuple[Comparison | None, str | None]:
    """A paired comparison of evaluation.json (the champion's or the baseline's), or why
    there is none."""
    if not isinstance(raw, Mapping):
        return None, None
    if raw.get("error"):
        return None, str(raw["error"])[:500]
    if not raw.get("metric"):
        return None, None
    low, high = (float(v) for v in raw["difference_interval"])
    trained = (raw.get("overlap") or {}).get("champion_trained_on_test")
    differing = raw.get("differing_rows")
    comparison = Comparison(
        metric=str(raw["metric"])[:MAX_METRIC_NAME],
        challenger=float(raw["challenger"]),
        champion=float(raw["champion"]),
        low=low,
        high=high,
        confidence=float(raw["confidence"]),
        rows=int(raw["rows"]),
        champion_trained_on_test=int(trained) if isinstance(trained, int) else None,
        differing_rows=int(differing) if isinstance(differing, int) and not isinstance(differing, bool) else None,
        against=str(raw.get("against") or "")[:200],
    )
    return comparison, None


NOTHING_CAPTURED = "nothing captured yet"

# (project, run id) → the project's deployed run other than that one, if any.
Champion = Callable[[str, str], Run | None]
# project → (dataset URI, why) for each dataset whose newest run failed preparing.
FailedDatasets = Callable[[str], Sequence[tuple[str, str]]]


class SageMakerExecutors:
    """CreateProcessingJob / CreateTrainingJob / Stop*: one boto3 SageMaker client (and
    S3, to see whether the project's holdout has keys yet)."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        champion: Champion | None = None,
        s3: Any = None,
        failed_datasets: FailedDatasets | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._champion = champion or (lambda project, run_id: None)
        self._s3 = s3
        self._failed_datasets = failed_datasets or (lambda project: ())

    def _has_keys(self, uri: str) -> bool:
        if self._s3 is None:
            return False
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        return bool(self._s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"))

    def _test_rows(self, run: Run) -> int | None:
        """The size of the run's test split, from its prepare job's profile (None when it
        cannot be read: the evaluate job then gets the most time allowed)."""
        if self._s3 is None:
            return None
        key = f"runs/{run.run_id}/prepare/profile/profile.json"
        try:
            body = self._s3.get_object(Bucket=self._settings.bucket, Key=key)["Body"].read(1 << 20)
            rows = json.loads(body)["splits"]["test"]
        except (ClientError, ValueError, KeyError, TypeError) as exc:
            logger.warning(f"the test split's size of run {run.run_id} is unknown ({key}): {exc}")
            return None
        return rows if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0 else None

    def _holdout_exists(self, project: str) -> bool:
        return self._has_keys(holdout_prefix(self._settings, project))

    def _prepare(self, command: StartProcessingJob, run: Run) -> Outcome:
        data = dataset_input(command.input_uri)
        # Only a run over a project's whole prefix (a retraining run) reads others' datasets.
        failed = self._failed_datasets(run.project) if data.endswith("/") else ()
        skipped = [(uri, why) for uri, why in failed if uri.startswith(data)]
        holdout = self._holdout_exists(run.project)
        production = bool(
            run.parent_run_id
            and run.config["task"] in spec.FEEDBACK_FIELDS
            and self._has_keys(labels_uri(self._settings, run.project))
            and self._has_keys(f"{capture_uri(self._settings, run.project)}/")
        )
        request = prepare_request(command, run, self._settings, holdout, skipped, production)
        outcome = self._create("create_processing_job", request)
        notes = [outcome.note, "split by the project's frozen holdout" if holdout else "the project's first holdout"]
        if production:
            labelled = "corrected" if run.config["task"] == "causal-lm" else "labelled"
            notes.append(f"with the {labelled} production traffic")
        excluded = set(excludable(data, skipped))
        for uri, why in skipped:
            path = dataset_input(uri)[len(data) :]
            skip = f"skipped {uri}: {why}"
            notes.append(skip if path in excluded else f"could not skip {uri} (too many or too long a path)")
        return Outcome(done=outcome.done, note="; ".join(notes))

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
        if command.step == "prepare":
            return self._prepare(command, run)
        if command.step == "evaluate":
            rows = self._test_rows(run)
            champion = self._champion(run.project, run.run_id)
            request = evaluate_request(command, run, self._settings, champion, rows)
            outcome = self._create("create_processing_job", request)
            where = request["ProcessingResources"]["ClusterConfig"]["InstanceType"]
            seconds, why = evaluation_runtime_s(run, self._settings, rows, models_measured(run, champion))
            return Outcome(done=outcome.done, note=f"{outcome.note}; on {where}, for at most {seconds} s ({why})")
        elif command.step == "drift":
            if self._s3 is not None and not self._has_keys(command.input_uri):
                # SageMaker refuses an empty input prefix: a model that has answered nothing
                # yet (or captures nothing) has nothing to check, and its alarms no data.
                return Outcome(done=True, note=f"{NOTHING_CAPTURED} under {command.input_uri}: no check this window")
            request = drift_request(
                command, run, self._settings, self._has_keys(labels_uri(self._settings, run.project))
            )
        else:
            raise PermanentCommandError(f"no processing job is defined for step {command.step!r}")
        return self._create("create_processing_job", request)

    def start_training_job(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, StartTrainingJob)
        return self._create("create_training_job", training_request(command, run, self._settings))

    def start_tuning_job(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, StartTuningJob)
        parent, note = self._warm_start_parent(command, run)
        request = tuning_request(command, run, self._settings, parent)
        outcome = self._create("create_hyper_parameter_tuning_job", request)
        return Outcome(done=outcome.done, note=f"{outcome.note}; {note}")

    def _warm_start_parent(self, command: StartTuningJob, run: Run) -> tuple[str | None, str]:
        """The parent run's tuning job, when it tuned and has finished; else a cold start.
        (A retraining run is of its parent's stage.)"""
        if not command.warm_start_from_run:
            return None, "cold start (no parent run)"
        parent = names.job_name(command.warm_start_from_run, "tune", stage=run.stage)
        try:
            status = self._client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=parent)[
                "HyperParameterTuningJobStatus"
            ]
        except ClientError as exc:
            if _code(exc) in ("ResourceNotFound", "ValidationException"):
                return None, f"cold start (parent run {command.warm_start_from_run} did not tune)"
            raise
        if status not in ("Completed", "Stopped"):
            return None, f"cold start (parent tuning job {parent} is {status})"
        return parent, f"warm start from {parent}"

    def describe_tuning_job(self, command: Command, run: Run) -> Outcome:
        """Feed DescribeHyperParameterTuningJob back as the tuning job's final event."""
        assert isinstance(command, DescribeTuningJob)
        described = self._client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=command.job_name)
        try:
            parsed = parse_described(TUNING, described, f"describe-{command.job_name}", datetime.now(UTC))
        except MalformedEventError as exc:
            raise PermanentCommandError(
                f"DescribeHyperParameterTuningJob answered what tuneloop cannot read: {exc}"
            ) from exc
        assert isinstance(parsed, TuningJobChanged)
        event = dataclasses.replace(parsed, run_id=run.run_id, described=True)
        return Outcome(done=True, note=f"best training job: {event.best_training_job or 'none'}", events=(event,))

    def describe_job(self, job_type: str, job_name: str) -> dict[str, Any]:
        """Describe<Processing|Training|Transform>Job, for cost and views."""
        operation, key = {
            "processing": ("describe_processing_job", "ProcessingJobName"),
            "training": ("describe_training_job", "TrainingJobName"),
            "transform": ("describe_transform_job", "TransformJobName"),
        }[job_type]
        return dict(getattr(self._client, operation)(**{key: job_name}))

    def tuning_trials(self, job_name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The tuning job's training jobs: hyperparameters, objective and status, best first."""
        trials: list[dict[str, Any]] = []
        request: dict[str, Any] = {
            "HyperParameterTuningJobName": job_name,
            "MaxResults": min(limit, 100),
            "SortBy": "FinalObjectiveMetricValue",
        }
        while len(trials) < limit:
            page = self._client.list_training_jobs_for_hyper_parameter_tuning_job(**request)
            for summary in page.get("TrainingJobSummaries", []):
                objective = summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
                trials.append(
                    {
                        "training_job": summary["TrainingJobName"],
                        "status": summary["TrainingJobStatus"],
                        "objective_status": summary.get("ObjectiveStatus"),
                        "objective": objective.get("Value"),
                        "hyperparameters": {
                            k: v.strip('"') for k, v in (summary.get("TunedHyperParameters") or {}).items()
                        },
                        "failure_reason": summary.get("FailureReason"),
                    }
                )
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
        return trials[:limit]

    def register_model_package(self, command: Command, run: Run) -> Outcome:
        assert isinstance(command, RegisterModelPackage)
        group = package_group(run)
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
        etag = self._model_etag(model_artifact_uri(self._settings, run, command.model_source), "the model to register")
        base = adapter_base_uri(run)
        base_etag = self._model_etag(base, "the adapter's base model") if base and base.endswith(".tar.gz") else None
        request = model_package_request(command, run, self._settings, etag, base_etag)
        return self._create("create_model_package", request)

    def _model_etag(self, uri: str, what: str) -> str | None:
        if self._s3 is None:
            return None
        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            return str(self._s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise PermanentCommandError(f"{what} is not at {uri}") from exc
            raise

    def update_model_package_approval(self, command: Command, run: Run) -> Outcome:
        """Approve or reject the package, saying who decided and why (ApprovalDescription)."""
        assert isinstance(command, UpdateModelPackageApproval)
        if not command.package_arn:
            raise PermanentCommandError("the run has no model package to approve or reject")
        self._client.update_model_package(
            ModelPackageArn=command.package_arn,
            ModelApprovalStatus="Approved" if command.approved else "Rejected",
            ApprovalDescription=approval_description(command),
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
