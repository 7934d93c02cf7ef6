"""The SageMaker requests job commands become, checked by botocore's own model (Stubber)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from chalicelib import spec
from chalicelib.config import Settings
from chalicelib.domain import names
from chalicelib.domain.commands import (
    DescribeTuningJob,
    LoadEvaluation,
    StartProcessingJob,
    StartTrainingJob,
    StartTuningJob,
    StopJob,
)
from chalicelib.domain.events import TuningJobChanged
from chalicelib.domain.limits import Limits
from chalicelib.domain.project import normalise_config
from chalicelib.domain.run import Run
from chalicelib.domain.states import RunState
from chalicelib.executors import PermanentCommandError
from chalicelib.sagemaker import (
    METRIC_DEFINITIONS,
    EvaluationLoader,
    NotConfiguredError,
    SageMakerExecutors,
    evaluate_request,
    generation_arguments,
    model_package_request,
    prepare_request,
    training_request,
    tuning_request,
)
from tests.conftest import DEMO_CONFIG, T0
from training.train import metric_line

RUN_ID = "aaaaaaaaaaaa"
SETTINGS = Settings(
    stage="test",
    region="us-east-1",
    bucket="tuneloop-test",
    projects_table="p",
    runs_table="r",
    role_arn="arn:aws:iam::123456789012:role/tuneloop-test-sagemaker-execution",
    training_image="763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.8.0-transformers4.56.2-gpu-py312-cu128-ubuntu22.04",
    processing_image="763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-cpu-py312-ubuntu22.04-sagemaker",
    code_uri="s3://tuneloop-test/code/0123abcd",
)


def run_with(**training: Any) -> Run:
    config = normalise_config({**DEMO_CONFIG, "training": {**DEMO_CONFIG["training"], **training}})
    return Run(RUN_ID, "demo", RunState.TRAINING, config, "s3://tuneloop-test/datasets/demo/ds/reviews.jsonl", T0)


PREPARE = StartProcessingJob(
    RUN_ID,
    "demo",
    names.job_name(RUN_ID, "prepare"),
    step="prepare",
    input_uri="s3://tuneloop-test/datasets/demo/ds/reviews.jsonl",
)
TRAIN = StartTrainingJob(
    RUN_ID, "demo", names.job_name(RUN_ID, "train", 2), attempt=2, resume_from=names.job_name(RUN_ID, "train", 1)
)


def stubbed() -> tuple[Any, Stubber]:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return client, Stubber(client)


def test_prepare_request_is_valid_and_complete() -> None:
    run = run_with()
    request = prepare_request(PREPARE, run, SETTINGS)
    client, stub = stubbed()
    stub.add_response(
        "create_processing_job", {"ProcessingJobArn": "arn:aws:sagemaker:us-east-1:1:processing-job/x"}, request
    )
    with stub:
        outcome = SageMakerExecutors(client, SETTINGS).start_processing_job(PREPARE, run)
    assert outcome.done
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert inputs["data"]["S3Uri"] == PREPARE.input_uri
    assert inputs["code"]["S3Uri"] == "s3://tuneloop-test/code/0123abcd/source/"
    assert {o["OutputName"] for o in request["ProcessingOutputConfig"]["Outputs"]} == {
        "train",
        "validation",
        "test",
        "profile",
        "report",
        "holdout",
    }
    outputs = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in request["ProcessingOutputConfig"]["Outputs"]}
    assert outputs["holdout"] == "s3://tuneloop-test/holdout/demo/"
    assert "holdout" not in inputs  # the project's first run: SageMaker refuses an empty input prefix
    assert {"Key": "tuneloop:run-id", "Value": RUN_ID} in request["Tags"]


def test_the_prepare_job_is_told_where_each_rows_fields_are() -> None:
    """Only the names a project changes go to the job (it defaults to tuneloop's own)."""
    assert (
        "--text-field" not in prepare_request(PREPARE, run_with(), SETTINGS)["AppSpecification"]["ContainerArguments"]
    )
    mapped = normalise_config({**DEMO_CONFIG, "data": {"text_field": "review", "label_field": "sentiment"}})
    arguments = prepare_request(PREPARE, dataclasses.replace(run_with(), config=mapped), SETTINGS)["AppSpecification"][
        "ContainerArguments"
    ]
    assert arguments[arguments.index("--text-field") + 1] == "review"
    assert arguments[arguments.index("--label-field") + 1] == "sentiment"
    assert "--prompt-field" not in arguments
    from training import prepare

    _, options = prepare.parse_args(arguments)
    assert options.source("text") == "review" and options.source("prompt") == "prompt"


def s3_listing(key_count: int) -> tuple[Any, Stubber]:
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(s3)
    stub.add_response(
        "list_objects_v2",
        {"KeyCount": key_count, "IsTruncated": False},
        {"Bucket": "tuneloop-test", "Prefix": "holdout/demo/", "MaxKeys": 1},
    )
    return s3, stub


def test_a_later_run_splits_by_the_projects_holdout_and_skips_failed_datasets() -> None:
    """A retraining run reads the project's whole prefix but the datasets whose own run
    failed preparing, and its prepare job gets the frozen holdout as an input."""
    command = dataclasses.replace(PREPARE, input_uri="s3://tuneloop-test/datasets/demo/")
    bad = ("s3://tuneloop-test/datasets/demo/pc.jsonl", "its run bbbbbbbbbbbb failed preparing: 60 of 300 rows")
    folder = ("s3://tuneloop-test/datasets/demo/more/manifest.json", "its run cccccccccccc failed preparing: x")
    elsewhere = ("s3://tuneloop-test/elsewhere/x.jsonl", "not under this run's data")
    s3, s3_stub = s3_listing(1)
    client, stub = stubbed()
    request = prepare_request(command, run_with(), SETTINGS, holdout=True, skipped=[bad, folder])
    stub.add_response(
        "create_processing_job", {"ProcessingJobArn": "arn:aws:sagemaker:us-east-1:1:processing-job/x"}, request
    )
    executors = SageMakerExecutors(client, SETTINGS, s3=s3, failed_datasets=lambda project: [bad, folder, elsewhere])
    with stub, s3_stub:
        outcome = executors.start_processing_job(command, run_with())
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in request["ProcessingInputs"]}
    assert inputs["holdout"] == "s3://tuneloop-test/holdout/demo/"
    arguments = request["AppSpecification"]["ContainerArguments"]
    excluded = [arguments[i + 1] for i, a in enumerate(arguments) if a == "--exclude"]
    assert excluded == ["pc.jsonl", "more/"]
    assert "skipped s3://tuneloop-test/datasets/demo/pc.jsonl: its run bbbbbbbbbbbb failed preparing" in outcome.note


def test_a_retraining_run_learns_from_labelled_production_traffic() -> None:
    """A child run of a project that has labels gets the project's capture and labels as
    prepare inputs; a first run (no parent) does not, nor a child before any label came."""
    command = dataclasses.replace(PREPARE, input_uri="s3://tuneloop-test/datasets/demo/")
    child = dataclasses.replace(run_with(), parent_run_id="bbbbbbbbbbbb")
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3_stub = Stubber(s3)
    for prefix in ("holdout/demo/", "labels/demo/", "capture/demo/"):
        s3_stub.add_response("list_objects_v2", {"KeyCount": 1, "IsTruncated": False},
                             {"Bucket": "tuneloop-test", "Prefix": prefix, "MaxKeys": 1})  # fmt: skip
    request = prepare_request(command, child, SETTINGS, holdout=True, production=True)
    client, stub = stubbed()
    stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:aws:sagemaker:us-east-1:1:processing-job/x"},
                      request)  # fmt: skip
    with stub, s3_stub:
        outcome = SageMakerExecutors(client, SETTINGS, s3=s3).start_processing_job(command, child)
    assert "with the labelled production traffic" in outcome.note
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert inputs["capture"]["S3Uri"] == "s3://tuneloop-test/capture/demo/"
    assert inputs["labels"]["S3Uri"] == "s3://tuneloop-test/labels/demo/"
    arguments = request["AppSpecification"]["ContainerArguments"]
    assert arguments[arguments.index("--production-dir") + 1] == "/opt/ml/processing/input/production"
    assert inputs["capture"]["LocalPath"] == "/opt/ml/processing/input/production/capture"
    # No labels yet: the same child run prepares from the project's data alone.
    s3_stub.add_response("list_objects_v2", {"KeyCount": 1, "IsTruncated": False},
                         {"Bucket": "tuneloop-test", "Prefix": "holdout/demo/", "MaxKeys": 1})  # fmt: skip
    s3_stub.add_response("list_objects_v2", {"KeyCount": 0, "IsTruncated": False},
                         {"Bucket": "tuneloop-test", "Prefix": "labels/demo/", "MaxKeys": 1})  # fmt: skip
    plain = prepare_request(command, child, SETTINGS, holdout=True)
    stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:aws:sagemaker:us-east-1:1:processing-job/x"},
                      plain)  # fmt: skip
    with stub, s3_stub:
        SageMakerExecutors(client, SETTINGS, s3=s3).start_processing_job(command, child)
    assert "--production-dir" not in plain["AppSpecification"]["ContainerArguments"]


def test_a_manifest_dataset_is_read_as_its_folder() -> None:
    command = dataclasses.replace(PREPARE, input_uri="s3://tuneloop-test/datasets/demo/ds/manifest.json")
    inputs = {i["InputName"]: i["S3Input"] for i in prepare_request(command, run_with(), SETTINGS)["ProcessingInputs"]}
    assert inputs["data"]["S3Uri"] == "s3://tuneloop-test/datasets/demo/ds/"


def test_spot_training_request() -> None:
    run = run_with(spot=True, warm_pool_s=0, max_runtime_s=3600, max_wait_s=7200, instance_count=2)
    request = training_request(TRAIN, run, SETTINGS)
    client, stub = stubbed()
    stub.add_response(
        "create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/x"}, request
    )
    with stub:
        assert SageMakerExecutors(client, SETTINGS).start_training_job(TRAIN, run).done
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    # Every attempt shares the checkpoint location, so attempt 2 resumes attempt 1.
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://tuneloop-test/checkpoints/{RUN_ID}/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["ResourceConfig"]["InstanceCount"] == 2
    hp = request["HyperParameters"]
    assert all(isinstance(v, str) for v in hp.values())
    assert hp["epochs"] == "3" and hp["learning-rate"] == "5e-05" and hp["batch-size"] == "16"
    assert hp["sagemaker_program"] == '"train.py"' and hp["sagemaker_torch_distributed_enabled"] == "true"
    assert {c["ChannelName"] for c in request["InputDataConfig"]} == {"train", "validation"}


def test_on_demand_training_has_no_max_wait() -> None:
    request = training_request(TRAIN, run_with(spot=False, warm_pool_s=0), SETTINGS)
    assert request["EnableManagedSpotTraining"] is False and "MaxWaitTimeInSeconds" not in request["StoppingCondition"]
    assert "KeepAlivePeriodInSeconds" not in request["ResourceConfig"]
    # Warm pools bill while they wait: off unless a project asks.
    assert normalise_config({"base_model": "org/model", "task": "text-classification"})["training"]["warm_pool_s"] == 0


def test_a_project_with_a_warm_pool_keeps_its_training_and_trial_instances() -> None:
    run = run_with(spot=False, warm_pool_s=600)
    request = training_request(TRAIN, run, SETTINGS)
    client, stub = stubbed()
    arn = {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/x"}
    stub.add_response("create_training_job", arn, request)
    with stub:
        assert SageMakerExecutors(client, SETTINGS).start_training_job(TRAIN, run).done
    assert request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 600
    config = {**run.config, "tuning": tuning_run().config["tuning"]}
    tuned = tuning_request(TUNE, dataclasses.replace(run, config=config), SETTINGS)
    assert tuned["TrainingJobDefinition"]["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 600
    # A run stored before the field existed starts as before.
    legacy = dict(run.config, training={k: v for k, v in run.config["training"].items() if k != "warm_pool_s"})
    assert (
        "KeepAlivePeriodInSeconds"
        not in training_request(TRAIN, dataclasses.replace(run, config=legacy), SETTINGS)["ResourceConfig"]
    )


def test_s3_base_model_vpc_and_kms() -> None:
    config = normalise_config({**DEMO_CONFIG, "base_model": "s3://tuneloop-test/models/base/"})
    run = Run(RUN_ID, "demo", RunState.TRAINING, config, "s3://b/d.jsonl", T0)
    settings = dataclasses.replace(
        SETTINGS, kms_key_id="alias/tuneloop", subnets=("subnet-1",), security_groups=("sg-1",)
    )
    request = training_request(TRAIN, run, settings)
    client, stub = stubbed()
    stub.add_response("create_training_job", {"TrainingJobArn": "arn:x"}, request)
    with stub:
        client.create_training_job(**request)
    assert any(c["ChannelName"] == "model" for c in request["InputDataConfig"])
    assert request["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}
    assert request["OutputDataConfig"]["KmsKeyId"] == "alias/tuneloop"
    prepare = prepare_request(PREPARE, run, settings)
    assert prepare["NetworkConfig"]["VpcConfig"]["Subnets"] == ["subnet-1"]


def test_metric_definitions_scrape_train_py_lines() -> None:
    line = metric_line(epoch=1, step=40, train_loss=0.4123, validation_macro_f1=0.875, samples_per_second=51.2)
    found = {d["Name"]: m.group(1) for d in METRIC_DEFINITIONS if (m := re.search(d["Regex"], line))}
    assert found == {
        "epoch": "1",
        "step": "40",
        "train_loss": "0.412300",
        "validation_macro_f1": "0.875000",
        "samples_per_second": "51.200000",
    }


def test_repeat_is_done_and_invalid_is_permanent() -> None:
    run = run_with()
    client, stub = stubbed()
    stub.add_client_error("create_training_job", "ResourceInUse", "Training job names must be unique")
    stub.add_client_error(
        "create_training_job", "ValidationException", "Instance type ml.g5.xlarge is not valid for spot"
    )
    stub.add_client_error("create_training_job", "ThrottlingException", "Rate exceeded")
    with stub:
        executors = SageMakerExecutors(client, SETTINGS)
        assert executors.start_training_job(TRAIN, run).done
        with pytest.raises(PermanentCommandError, match="ValidationException"):
            executors.start_training_job(TRAIN, run)
        with pytest.raises(Exception, match="Rate exceeded"):
            executors.start_training_job(TRAIN, run)  # transient: left for the reconciler


def test_stop_of_a_finished_job_is_done() -> None:
    client, stub = stubbed()
    stub.add_response("stop_training_job", {}, {"TrainingJobName": "tl-aaaaaaaaaaaa-train-1"})
    stub.add_client_error("stop_processing_job", "ValidationException", "The job is not in progress")
    with stub:
        executors = SageMakerExecutors(client, SETTINGS)
        assert executors.stop_job(
            StopJob(RUN_ID, job_type="training", job_name="tl-aaaaaaaaaaaa-train-1"), run_with()
        ).done
        assert executors.stop_job(
            StopJob(RUN_ID, job_type="processing", job_name="tl-aaaaaaaaaaaa-prepare-1"), run_with()
        ).done


def test_missing_configuration_is_a_clear_permanent_error() -> None:
    with pytest.raises(PermanentCommandError, match="execution role is not configured"):
        prepare_request(PREPARE, run_with(), dataclasses.replace(SETTINGS, role_arn=""))


EVALUATE = StartProcessingJob(
    RUN_ID, "demo", names.job_name(RUN_ID, "evaluate"), step="evaluate", input_uri=names.job_name(RUN_ID, "train", 2)
)


def test_evaluate_request_reads_the_model_and_the_test_split() -> None:
    run = run_with()
    client, stub = stubbed()
    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu", inference_image_gpu="inference:gpu")
    request = evaluate_request(EVALUATE, run, settings)
    stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:x"}, request)
    with stub:
        assert SageMakerExecutors(client, settings).start_processing_job(EVALUATE, run).done
    assert request["AppSpecification"]["ImageUri"] == "inference:cpu"  # evaluated on the serving stack
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in request["ProcessingInputs"]}
    assert inputs["model"] == f"s3://tuneloop-test/runs/{RUN_ID}/train/{EVALUATE.input_uri}/output/model.tar.gz"
    assert inputs["test"] == f"s3://tuneloop-test/runs/{RUN_ID}/prepare/test/"
    assert request["AppSpecification"]["ContainerEntrypoint"][-1].endswith("/code/evaluate.py")
    assert inputs["report"] == f"s3://tuneloop-test/runs/{RUN_ID}/prepare/report/"  # the report's data section
    arguments = request["AppSpecification"]["ContainerArguments"]
    assert "champion" not in inputs and "--champion-run-id" not in arguments
    # The gate's comparison is on the project's primary metric, at its confidence.
    assert arguments[arguments.index("--primary-metric") + 1] == "macro_f1"
    assert arguments[arguments.index("--confidence") + 1] == "0.95"


def test_the_deployed_champion_is_measured_on_the_same_split() -> None:
    run = run_with()
    champion = dataclasses.replace(
        run, run_id="cccccccccccc", state=RunState.DEPLOYED, model_source="tl-cccccccccccc-train-1"
    )
    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu", inference_image_gpu="inference:gpu")
    asked: list[tuple[str, str]] = []

    def find(project: str, run_id: str) -> Run:
        asked.append((project, run_id))
        return champion

    client, stub = stubbed()
    request = evaluate_request(EVALUATE, run, settings, champion)
    stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:x"}, request)
    with stub:
        assert SageMakerExecutors(client, settings, champion=find).start_processing_job(EVALUATE, run).done
    assert asked == [("demo", RUN_ID)]
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert inputs["champion"]["S3Uri"] == (
        "s3://tuneloop-test/runs/cccccccccccc/train/tl-cccccccccccc-train-1/output/model.tar.gz"
    )
    assert inputs["champion"]["LocalPath"] == "/opt/ml/processing/input/champion"
    assert request["AppSpecification"]["ContainerArguments"][-2:] == ["--champion-run-id", "cccccccccccc"]
    # compare_champion off: no champion input at all.
    off = dataclasses.replace(run, config={**run.config, "gates": {**run.config["gates"], "compare_champion": False}})
    request = evaluate_request(EVALUATE, off, settings, champion)
    assert "champion" not in {i["InputName"] for i in request["ProcessingInputs"]}
    assert "--baseline" not in request["AppSpecification"]["ContainerArguments"]  # a champion is deployed


def test_a_first_model_is_measured_against_a_trivial_baseline() -> None:
    """No champion: the job measures the majority class from the profile (a causal LM
    fine-tuned in full from an s3:// base: that base, untuned, champion or not);
    compare_baseline off: not."""
    run = run_with()
    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu", inference_image_gpu="inference:gpu")
    request = evaluate_request(EVALUATE, run, settings, None)
    assert "--baseline" in request["AppSpecification"]["ContainerArguments"]
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert inputs["profile"]["S3Uri"] == f"s3://tuneloop-test/runs/{RUN_ID}/prepare/profile/"
    assert "untuned" not in inputs
    base = "s3://tuneloop-test/models/llm/model.tar.gz"
    llm = dataclasses.replace(run, config=normalise_config({"base_model": base, "task": "causal-lm"}))
    inputs = {i["InputName"]: i["S3Input"] for i in evaluate_request(EVALUATE, llm, settings, None)["ProcessingInputs"]}
    assert inputs["untuned"]["S3Uri"] == base and inputs["untuned"]["LocalPath"] == "/opt/ml/processing/input/untuned"
    off = dataclasses.replace(run, config={**run.config, "gates": {**run.config["gates"], "compare_baseline": False}})
    assert "--baseline" not in evaluate_request(EVALUATE, off, settings, None)["AppSpecification"]["ContainerArguments"]
    # A causal LM is measured against its untuned base with a champion deployed too.
    champion = dataclasses.replace(run_with(), run_id="cccccccccccc", model_source="tl-cccccccccccc-train-1")
    request = evaluate_request(EVALUATE, llm, settings, champion)
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert {"champion", "untuned"} <= set(inputs)
    assert "--baseline" in request["AppSpecification"]["ContainerArguments"]


def test_the_evaluate_job_runs_where_the_model_fits_for_as_long_as_its_test_split_needs() -> None:
    """A causal LM trained on a GPU instance is evaluated on that instance type, in the
    inference image's GPU build; a classifier on the stage's processing instance; the
    project can name both. The job's MaxRuntimeInSeconds follows the test split's size,
    read from the prepare job's profile, within the stage's runtime limit."""
    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu", inference_image_gpu="inference:gpu")
    classifier = run_with(instance_type="ml.g5.xlarge")
    cluster = evaluate_request(EVALUATE, classifier, settings)["ProcessingResources"]["ClusterConfig"]
    assert cluster["InstanceType"] == "ml.m5.large"
    llm_config = {"base_model": "random:llama-tiny", "task": "causal-lm"}
    llm = dataclasses.replace(classifier, config=normalise_config(llm_config))
    request = evaluate_request(EVALUATE, llm, settings)
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert request["AppSpecification"]["ImageUri"] == "inference:gpu"
    on_cpu = dataclasses.replace(
        llm, config=normalise_config({**llm_config, "training": {"instance_type": "ml.m5.xlarge"}})
    )
    assert evaluate_request(EVALUATE, on_cpu, settings)["ProcessingResources"]["ClusterConfig"]["InstanceType"] == (
        "ml.m5.large"
    )
    # Trainium is no CUDA GPU: a model trained there is evaluated on the processing instance.
    trn = dataclasses.replace(
        llm, config=normalise_config({**llm_config, "training": {"instance_type": "ml.trn1.2xlarge"}})
    )
    request = evaluate_request(EVALUATE, trn, settings)
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.large"
    assert request["AppSpecification"]["ImageUri"] == "inference:cpu"
    named = normalise_config({**llm_config, "evaluation": {"instance_type": "ml.g4dn.xlarge", "max_runtime_s": 5400}})
    request = evaluate_request(EVALUATE, dataclasses.replace(llm, config=named), settings, test_rows=10_000)
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == 5400
    with pytest.raises(NotConfiguredError, match="GPU build"):
        evaluate_request(EVALUATE, llm, dataclasses.replace(settings, inference_image_gpu=""))

    def limit(run: Run, rows: int | None, stage: Settings = settings) -> int:
        return int(evaluate_request(EVALUATE, run, stage, test_rows=rows)["StoppingCondition"]["MaxRuntimeInSeconds"])

    # More test rows, more time; on a CPU, more than on a GPU; never under half an hour.
    assert limit(on_cpu, 100) == 900 + 100 * 2 * 64  # the start, and 64 tokens for the model and its base
    champion = dataclasses.replace(on_cpu, run_id="cccccccccccc", model_source="tl-cccccccccccc-train-1")
    with_champion = evaluate_request(EVALUATE, on_cpu, settings, champion, test_rows=100)
    assert with_champion["StoppingCondition"]["MaxRuntimeInSeconds"] == 900 + 100 * 3 * 64  # and the champion's
    assert 1800 < limit(on_cpu, 10) < limit(on_cpu, 100) < limit(on_cpu, 200)
    assert limit(llm, 200) < limit(on_cpu, 200)
    assert limit(classifier, 100) == 1800 < limit(classifier, 5000)
    # Within the stage's runtime limit; the most allowed when the size is unknown.
    tight = dataclasses.replace(settings, limits=Limits(max_runtime_s=7200))
    assert limit(on_cpu, 100_000, tight) == 7200 == limit(on_cpu, None, tight)
    assert limit(classifier, 10, dataclasses.replace(settings, limits=Limits(max_runtime_s=1000))) == 1000
    assert limit(on_cpu, None) == 86400

    # The executor reads the size from the run's profile and says what it chose.
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3_stub = Stubber(s3)
    key = {"Bucket": "tuneloop-test", "Key": f"runs/{RUN_ID}/prepare/profile/profile.json"}
    profile = json.dumps({"rows": 1000, "splits": {"train": 800, "validation": 100, "test": 100}}).encode()
    s3_stub.add_response("get_object", {"Body": StreamingBody(io.BytesIO(profile), len(profile))}, key)
    s3_stub.add_client_error("get_object", "NoSuchKey", expected_params=key)
    odd = json.dumps({"splits": {"test": "100"}}).encode()
    s3_stub.add_response("get_object", {"Body": StreamingBody(io.BytesIO(odd), len(odd))}, key)
    client, stub = stubbed()
    for rows in (100, None, None):
        stub.add_response(
            "create_processing_job",
            {"ProcessingJobArn": "arn:x"},
            evaluate_request(EVALUATE, on_cpu, settings, test_rows=rows),
        )
    executors = SageMakerExecutors(client, settings, s3=s3)
    with stub, s3_stub:
        notes = [executors.start_processing_job(EVALUATE, on_cpu).note for _ in range(3)]
    assert f"on ml.m5.large, for at most {limit(on_cpu, 100)} s (100 test rows, 2 models on CPU)" in notes[0]
    assert (
        notes[1].endswith("for at most 86400 s (test split's size unknown: the most allowed)") and notes[1] == notes[2]
    )


def test_loaded_evaluation_becomes_an_event() -> None:
    import io
    import json

    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(s3)
    body = json.dumps({"summary": {"accuracy": 0.9, "macro_f1": 0.88}, "champion": None}).encode()
    key = {"Bucket": "tuneloop-test", "Key": f"runs/{RUN_ID}/evaluate/evaluation/evaluation.json"}
    stub.add_response("get_object", {"Body": io.BytesIO(body)}, key)
    stub.add_response("get_object", {"Body": io.BytesIO(b"not json")}, key)
    command = LoadEvaluation(RUN_ID, "demo", EVALUATE.job_name)
    with stub:
        outcome = EvaluationLoader(s3, SETTINGS).load(command, run_with())
        [event] = outcome.events
        assert event.metrics == {"accuracy": 0.9, "macro_f1": 0.88} and event.champion_metrics is None
        assert event.event_id == f"evaluation-{EVALUATE.job_name}"  # a repeat is a duplicate
        with pytest.raises(PermanentCommandError, match="not an evaluation"):
            EvaluationLoader(s3, SETTINGS).load(command, run_with())
    stub = Stubber(s3)
    challenged = {
        "summary": {"macro_f1": 0.9},
        "champion": {"macro_f1": 0.8},
        "champion_run_id": "cccccccccccc",
    }
    stub.add_response("get_object", {"Body": io.BytesIO(json.dumps(challenged).encode())}, key)
    with stub:
        [event] = EvaluationLoader(s3, SETTINGS).load(command, run_with()).events
    assert event.champion_metrics == {"macro_f1": 0.8} and event.champion_run_id == "cccccccccccc"


def test_register_model_package_request() -> None:
    from chalicelib.domain.commands import RegisterModelPackage, UpdateModelPackageApproval

    settings = dataclasses.replace(
        SETTINGS,
        inference_image="763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:2.6.0-transformers4.51.3-cpu-py312-ubuntu22.04",
    )
    run = dataclasses.replace(run_with(), parent_run_id="bbbbbbbbbbbb")
    command = RegisterModelPackage(
        RUN_ID, "demo", names.job_name(RUN_ID, "train", 1), approval_status="PendingManualApproval"
    )
    request = model_package_request(command, run, settings)
    client, stub = stubbed()
    stub.add_client_error(
        "create_model_package_group", "ValidationException", "Model Package Group already exists: arn:x"
    )
    stub.add_response(
        "create_model_package", {"ModelPackageArn": "arn:aws:sagemaker:us-east-1:1:model-package/tl-demo/3"}, request
    )
    arn = "arn:aws:sagemaker:us-east-1:1:model-package/tl-demo/3"
    stub.add_response(
        "update_model_package",
        {"ModelPackageArn": arn},
        {"ModelPackageArn": arn, "ModelApprovalStatus": "Approved",
         "ApprovalDescription": "approved through tuneloop by arn:aws:iam::1:user/ana: ok"},
    )  # fmt: skip
    with stub:
        executors = SageMakerExecutors(client, settings)
        assert executors.register_model_package(command, run).done
        assert executors.update_model_package_approval(  # the package records who approved, and why
            UpdateModelPackageApproval(RUN_ID, arn, approved=True, reason="ok", approver="arn:aws:iam::1:user/ana"), run
        ).done
    assert request["ModelPackageGroupName"] == "tl-demo" and request["ClientToken"] == f"tuneloop-{RUN_ID}"
    assert request["CustomerMetadataProperties"]["tuneloop:run-id"] == RUN_ID
    assert request["CustomerMetadataProperties"]["tuneloop:parent-run-id"] == "bbbbbbbbbbbb"
    container = request["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"].endswith(f"/train/{command.model_source}/output/model.tar.gz")
    assert request["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"].endswith(
        "/evaluate/evaluation/evaluation.json"
    )


TUNING_RANGES = {
    "learning_rate": {"type": "continuous", "min": 1e-5, "max": 1e-3, "scaling": "Logarithmic"},
    "batch_size": {"type": "categorical", "values": [8, 16]},
    "warmup_ratio": {"type": "continuous", "min": 0.0, "max": 0.2},
    "lora_r": {"type": "integer", "min": 4, "max": 32},
}


def tuning_run(parent: str | None = None, **tuning: Any) -> Run:
    config = normalise_config(
        {
            **DEMO_CONFIG,
            "training": {
                **DEMO_CONFIG["training"],
                "hyperparameters": {"epochs": 3, "learning_rate": 5e-5},
                "spot": True,
                "warm_pool_s": 0,
            },
            "tuning": {
                "objective": {"metric": "validation_macro_f1"},
                "ranges": TUNING_RANGES,
                "max_jobs": 6,
                "max_parallel_jobs": 2,
                **tuning,
            },
        }
    )
    return Run(RUN_ID, "demo", RunState.TUNING, config, "s3://tuneloop-test/datasets/demo/ds/reviews.jsonl", T0, parent)


TUNE = StartTuningJob(RUN_ID, "demo", names.job_name(RUN_ID, "tune"))


def test_tuning_request_is_valid_and_keeps_spot_and_checkpoints() -> None:
    run = tuning_run()
    request = tuning_request(TUNE, run, SETTINGS)
    client, stub = stubbed()
    stub.add_response(
        "create_hyper_parameter_tuning_job",
        {"HyperParameterTuningJobArn": "arn:aws:sagemaker:us-east-1:1:hyper-parameter-tuning-job/x"},
        request,
    )
    with stub:
        outcome = SageMakerExecutors(client, SETTINGS).start_tuning_job(TUNE, run)
    assert outcome.done and "cold start" in outcome.note
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian" and config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation_macro_f1"}
    assert config["ParameterRanges"] == {
        "IntegerParameterRanges": [{"Name": "lora-r", "MinValue": "4", "MaxValue": "32", "ScalingType": "Auto"}],
        "ContinuousParameterRanges": [
            {"Name": "learning-rate", "MinValue": "1e-05", "MaxValue": "0.001", "ScalingType": "Logarithmic"},
            {"Name": "warmup-ratio", "MinValue": "0.0", "MaxValue": "0.2", "ScalingType": "Auto"},
        ],
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["8", "16"]}],
    }
    definition = request["TrainingJobDefinition"]
    # The AWS-sample bug: tuners that drop these run every trial on-demand, without resume.
    assert definition["EnableManagedSpotTraining"] is True
    assert (
        definition["StoppingCondition"]["MaxWaitTimeInSeconds"] > definition["StoppingCondition"]["MaxRuntimeInSeconds"]
    )
    assert definition["CheckpointConfig"]["S3Uri"] == f"s3://tuneloop-test/checkpoints/{RUN_ID}/"
    # The objective is scraped by the same definitions as a single training job's metrics.
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert config["HyperParameterTuningJobObjective"]["MetricName"] in {m["Name"] for m in METRIC_DEFINITIONS}
    # A tuned hyperparameter is never also static (AWS rejects that).
    assert "learning-rate" not in definition["StaticHyperParameters"]
    assert definition["StaticHyperParameters"]["epochs"] == "3"
    assert "WarmStartConfig" not in request
    assert len(request["HyperParameterTuningJobName"]) <= 32


def test_hyperband_turns_the_median_rule_off_and_bounds_resources() -> None:
    request = tuning_request(TUNE, tuning_run(strategy="Hyperband"), SETTINGS)
    config = request["HyperParameterTuningJobConfig"]
    assert config["TrainingJobEarlyStoppingType"] == "Off"
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 3}}


def test_hyperband_with_auto_epochs_is_bounded_by_the_most_auto_may_choose() -> None:
    """SageMaker infers MaxResource from a static "epochs", and "auto" is no number."""
    run = tuning_run(strategy="Hyperband")
    run.config["training"]["hyperparameters"]["epochs"] = "auto"
    request = tuning_request(TUNE, run, SETTINGS)
    assert request["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] == "auto"
    hyperband = request["HyperParameterTuningJobConfig"]["StrategyConfig"]["HyperbandStrategyConfig"]
    assert hyperband == {"MinResource": 1, "MaxResource": spec.AUTO_EPOCHS[1]}


def test_retraining_run_warm_starts_from_the_parents_tuning_job() -> None:
    parent = "bbbbbbbbbbbb"
    run = tuning_run(parent=parent)
    command = dataclasses.replace(TUNE, warm_start_from_run=parent)
    parent_job = names.job_name(parent, "tune")
    request = tuning_request(command, run, SETTINGS, warm_start_parent=parent_job)
    assert request["WarmStartConfig"] == {
        "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": parent_job}],
        "WarmStartType": "TransferLearning",
    }
    client, stub = stubbed()
    stub.add_response(
        "describe_hyper_parameter_tuning_job",
        described_tuning_job(parent_job, "Completed"),
        {"HyperParameterTuningJobName": parent_job},
    )
    stub.add_response("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": "arn:x"}, request)
    with stub:
        outcome = SageMakerExecutors(client, SETTINGS).start_tuning_job(command, run)
    assert f"warm start from {parent_job}" in outcome.note
    stub.assert_no_pending_responses()


def test_a_parent_that_did_not_tune_means_a_cold_start() -> None:
    parent = "bbbbbbbbbbbb"
    run = tuning_run(parent=parent)
    command = dataclasses.replace(TUNE, warm_start_from_run=parent)
    client, stub = stubbed()
    stub.add_client_error(
        "describe_hyper_parameter_tuning_job", "ResourceNotFound", "Amazon SageMaker can't find a tuning job"
    )
    stub.add_response(
        "create_hyper_parameter_tuning_job",
        {"HyperParameterTuningJobArn": "arn:x"},
        tuning_request(command, run, SETTINGS),
    )
    with stub:
        outcome = SageMakerExecutors(client, SETTINGS).start_tuning_job(command, run)
    assert "cold start (parent run bbbbbbbbbbbb did not tune)" in outcome.note


def described_tuning_job(name: str, status: str, best: str | None = None, completed: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/{name}",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 1},
        },
        "HyperParameterTuningJobStatus": status,
        "CreationTime": T0,
        "TrainingJobStatusCounters": {"Completed": completed, "NonRetryableError": 3 - completed, "Stopped": 0},
        "ObjectiveStatusCounters": {"Succeeded": completed, "Pending": 0, "Failed": 3 - completed},
    }
    if best:
        body["BestTrainingJob"] = {
            "TrainingJobName": best,
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{best}",
            "CreationTime": T0,
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"learning-rate": "0.0001"},
        }
    return body


def test_describe_tuning_job_feeds_back_the_best_job_or_the_counts() -> None:
    run = tuning_run()
    command = DescribeTuningJob(RUN_ID, TUNE.job_name)
    client, stub = stubbed()
    stub.add_response(
        "describe_hyper_parameter_tuning_job",
        described_tuning_job(TUNE.job_name, "Completed", best=f"{TUNE.job_name}-002-0a1b2c3d", completed=1),
        {"HyperParameterTuningJobName": TUNE.job_name},
    )
    stub.add_response(
        "describe_hyper_parameter_tuning_job",
        described_tuning_job(TUNE.job_name, "Completed"),
        {"HyperParameterTuningJobName": TUNE.job_name},
    )
    with stub:
        found = SageMakerExecutors(client, SETTINGS).describe_tuning_job(command, run).events[0]
        none = SageMakerExecutors(client, SETTINGS).describe_tuning_job(command, run).events[0]
    assert isinstance(found, TuningJobChanged) and found.described
    assert found.best_training_job == f"{TUNE.job_name}-002-0a1b2c3d" and found.kind == "tuning_job.completed"
    assert isinstance(none, TuningJobChanged) and none.best_training_job is None
    assert none.details["counters"]["NonRetryableError"] == 3


def test_trials_are_listed_best_first_with_their_hyperparameters() -> None:
    client, stub = stubbed()
    summary = {
        "TrainingJobName": f"{TUNE.job_name}-001-0a1b2c3d",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/x",
        "CreationTime": T0,
        "TrainingJobStatus": "Completed",
        "TunedHyperParameters": {"learning-rate": '"0.0002"'},
        "ObjectiveStatus": "Succeeded",
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "validation_macro_f1", "Value": 0.8},
    }
    params = {"HyperParameterTuningJobName": TUNE.job_name, "MaxResults": 100, "SortBy": "FinalObjectiveMetricValue"}
    stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job",
        {"TrainingJobSummaries": [summary], "NextToken": "t"},
        params,
    )
    stub.add_response(
        "list_training_jobs_for_hyper_parameter_tuning_job",
        {"TrainingJobSummaries": [{**summary, "TrainingJobName": f"{TUNE.job_name}-002-0a1b2c3d"}]},
        {**params, "NextToken": "t"},
    )
    with stub:
        trials = SageMakerExecutors(client, SETTINGS).tuning_trials(TUNE.job_name)
    assert [t["training_job"] for t in trials] == [f"{TUNE.job_name}-001-0a1b2c3d", f"{TUNE.job_name}-002-0a1b2c3d"]
    assert trials[0]["hyperparameters"] == {"learning-rate": "0.0002"} and trials[0]["objective"] == 0.8


def test_a_stored_hyperparameter_can_never_name_the_model_the_task_or_a_path() -> None:
    """Config validation refuses these names; the request refuses them again, and the
    system's keys come last, whatever a stored config holds (defence in depth)."""
    run = run_with()
    forged = {**run.config["training"]["hyperparameters"], "base_model": "evil/model", "model_dir": "/etc", "task": "x"}
    run = dataclasses.replace(
        run, config={**run.config, "training": {**run.config["training"], "hyperparameters": forged}}
    )
    request = training_request(TRAIN, run, SETTINGS)
    hyper = request["HyperParameters"]
    assert hyper["base-model"] == run.config["base_model"] and hyper["task"] == "text-classification"
    assert "model-dir" not in hyper and "model_dir" not in hyper
    assert len(hyper) <= 100 and all(len(k) <= 256 and len(v) <= 2500 for k, v in hyper.items())


def test_a_registered_package_pins_its_artifacts_etag() -> None:
    from chalicelib.domain.commands import RegisterModelPackage

    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu", inference_image_gpu="inference:gpu")
    run = run_with()
    command = RegisterModelPackage(RUN_ID, "demo", names.job_name(RUN_ID, "train", 1), approval_status="Approved")
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3_stub = Stubber(s3)
    key = f"runs/{RUN_ID}/train/{names.job_name(RUN_ID, 'train', 1)}/output/model.tar.gz"
    s3_stub.add_response("head_object", {"ETag": '"0123abcd"'}, {"Bucket": "tuneloop-test", "Key": key})
    request = model_package_request(command, run, settings, "0123abcd")
    assert request["InferenceSpecification"]["Containers"][0]["ModelDataETag"] == "0123abcd"
    client, stub = stubbed()
    stub.add_response("create_model_package_group", {"ModelPackageGroupArn": "arn:g"})
    stub.add_response(
        "create_model_package", {"ModelPackageArn": "arn:aws:sagemaker:us-east-1:1:model-package/tl-demo/1"}, request
    )
    with stub, s3_stub:
        assert SageMakerExecutors(client, settings, s3=s3).register_model_package(command, run).done


BASE = "s3://tuneloop-test/runs/bbbbbbbbbbbb/train/tl-bbbbbbbbbbbb-train-1/output/model.tar.gz"


def adapter_run(base: str = BASE, run_id: str = RUN_ID) -> Run:
    config = normalise_config(
        {
            **DEMO_CONFIG,
            "base_model": base,
            "training": {**DEMO_CONFIG["training"], "method": "lora", "artifact": "adapter"},
        }
    )
    return Run(run_id, "demo", RunState.EVALUATING, config, "s3://tuneloop-test/datasets/demo/ds/reviews.jsonl", T0,
               model_source=names.job_name(run_id, "train", 1))  # fmt: skip


def test_an_adapter_is_registered_on_its_base_with_both_artifacts_pinned() -> None:
    from chalicelib.domain.commands import RegisterModelPackage

    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu", inference_image_gpu="inference:gpu")
    run = adapter_run()
    assert training_request(TRAIN, run, settings)["HyperParameters"]["artifact"] == "adapter"
    command = RegisterModelPackage(RUN_ID, "demo", names.job_name(RUN_ID, "train", 1), approval_status="Approved")
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3_stub = Stubber(s3)
    key = f"runs/{RUN_ID}/train/{names.job_name(RUN_ID, 'train', 1)}/output/model.tar.gz"
    s3_stub.add_response("head_object", {"ETag": '"0123abcd"'}, {"Bucket": "tuneloop-test", "Key": key})
    s3_stub.add_response(
        "head_object",
        {"ETag": '"feedbeef"'},
        {"Bucket": "tuneloop-test", "Key": BASE.removeprefix("s3://tuneloop-test/")},
    )
    request = model_package_request(command, run, settings, "0123abcd", "feedbeef")
    container = request["InferenceSpecification"]["Containers"][0]
    assert container["AdditionalModelDataSources"] == [
        {
            "ChannelName": "base",
            "S3DataSource": {"S3Uri": BASE, "S3DataType": "S3Object", "CompressionType": "Gzip", "ETag": "feedbeef"},
        }
    ]
    client, stub = stubbed()  # botocore's model checks the request
    stub.add_response("create_model_package_group", {"ModelPackageGroupArn": "arn:g"})
    stub.add_response(
        "create_model_package", {"ModelPackageArn": "arn:aws:sagemaker:us-east-1:1:model-package/tl-demo/1"}, request
    )
    with stub, s3_stub:
        assert SageMakerExecutors(client, settings, s3=s3).register_model_package(command, run).done
    # A base whose archive is gone: the registration fails, naming it.
    s3_stub.add_response("head_object", {"ETag": '"0123abcd"'}, {"Bucket": "tuneloop-test", "Key": key})
    s3_stub.add_client_error("head_object", "404", http_status_code=404)
    client, stub = stubbed()
    stub.add_response("create_model_package_group", {"ModelPackageGroupArn": "arn:g"})
    with stub, s3_stub, pytest.raises(PermanentCommandError, match="the adapter's base model is not at s3://"):
        SageMakerExecutors(client, settings, s3=s3).register_model_package(command, run)
    # A base given as a folder of files: a prefix, nothing to unpack, nothing to pin.
    folder = adapter_run("s3://tuneloop-test/models/base")
    sources = model_package_request(command, folder, settings)["InferenceSpecification"]["Containers"][0]
    assert sources["AdditionalModelDataSources"][0]["S3DataSource"] == {
        "S3Uri": "s3://tuneloop-test/models/base/", "S3DataType": "S3Prefix", "CompressionType": "None"}  # fmt: skip
    # A packaged base ships with the endpoint's code; a merged model has no base at all.
    packaged = dataclasses.replace(folder, config={**folder.config, "base_model": DEMO_CONFIG["base_model"]})
    for other in (packaged, run_with()):
        container = model_package_request(command, other, settings)["InferenceSpecification"]["Containers"][0]
        assert "AdditionalModelDataSources" not in container


def test_the_jobs_that_load_an_adapter_get_its_base() -> None:
    """Evaluate (the challenger's and the champion's bases) and the drift check."""
    from chalicelib.sagemaker import drift_request

    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu", inference_image_gpu="inference:gpu")
    champion = adapter_run("s3://tuneloop-test/models/older.tar.gz", "cccccccccccc")
    request = evaluate_request(EVALUATE, adapter_run(), settings, champion)
    client, stub = stubbed()
    stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:x"}, request)
    with stub:
        client.create_processing_job(**request)
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert (inputs["base"]["S3Uri"], inputs["base"]["LocalPath"]) == (BASE, "/opt/ml/processing/input/base")
    assert inputs["champion-base"]["S3Uri"] == "s3://tuneloop-test/models/older.tar.gz"
    assert inputs["champion-base"]["LocalPath"] == "/opt/ml/processing/input/champion-base"
    assert not {"base", "champion-base"} & {
        i["InputName"] for i in evaluate_request(EVALUATE, run_with(), settings)["ProcessingInputs"]
    }
    drift = drift_request(EVALUATE, champion, settings)
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in drift["ProcessingInputs"]}
    assert inputs["base"] == "s3://tuneloop-test/models/older.tar.gz"


def test_a_causal_lm_serves_in_the_image_that_streams() -> None:
    from chalicelib.domain.commands import RegisterModelPackage
    from chalicelib.sagemaker import serving_image

    settings = dataclasses.replace(SETTINGS, inference_image="hf-inference", streaming_image="pytorch-inference")
    decoder = dataclasses.replace(
        run_with(), config=normalise_config({"base_model": "random:llama-tiny", "task": "causal-lm"})
    )
    assert serving_image(settings, decoder) == "pytorch-inference"
    assert serving_image(settings, run_with()) == "hf-inference"  # a classifier does not stream
    assert serving_image(dataclasses.replace(settings, streaming_image=""), decoder) == "hf-inference"
    command = RegisterModelPackage(RUN_ID, "demo", names.job_name(RUN_ID, "train", 1), approval_status="Approved")
    container = model_package_request(command, decoder, settings)["InferenceSpecification"]["Containers"][0]
    assert container["Image"] == "pytorch-inference"


def test_a_language_models_generation_settings_reach_its_jobs_in_pieces_sagemaker_takes() -> None:
    """The example project's JSON schema makes its generation settings 400+ characters;
    SageMaker takes at most 100 container arguments of 256 characters each. The evaluate
    and drift jobs get the JSON in pieces, each after its own --generation, and join them;
    a project whose settings could not fit is refused when it is made."""
    import botocore.session

    from chalicelib.domain.project import ConfigError
    from chalicelib.sagemaker import drift_request

    example = json.loads((Path(__file__).parents[2] / "examples" / "llm-project.json").read_text())["config"]
    run = dataclasses.replace(run_with(), config=normalise_config(example), model_source="tl-x-train-1")
    settings = dataclasses.replace(SETTINGS, inference_image="inference:cpu", inference_image_gpu="inference:gpu")
    limits = botocore.session.get_session().get_service_model("sagemaker").shape_for("AppSpecification")
    shape = limits.members["ContainerArguments"]
    drift = StartProcessingJob(RUN_ID, "demo", names.job_name(RUN_ID, "drift", 1), step="drift",
                               input_uri="s3://tuneloop-test/capture/demo/")  # fmt: skip
    for request in (evaluate_request(EVALUATE, run, settings), drift_request(drift, run, settings, True)):
        arguments = request["AppSpecification"]["ContainerArguments"]
        assert len(arguments) <= shape.metadata["max"]
        assert max(map(len, arguments)) <= shape.member.metadata["max"]
        pieces = [a.removeprefix("--generation=") for a in arguments if a.startswith("--generation=")]
        assert len(pieces) >= 2 and json.loads("".join(pieces)) == run.config["generation"]
    # Read back as the jobs read them: a piece that starts with "-" is still a value.
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--generation", action="append", default=[])
    dashed = {**run.config["generation"], "regex": "-" * 300}
    pieces = [a for a in generation_arguments(dashed)]
    assert any(a.startswith("--generation=-") for a in pieces)
    assert json.loads("".join(parser.parse_args(pieces).generation)) == dashed
    huge = {**example["generation"], "json_schema": {"type": "object", "description": "x" * 9000}}
    with pytest.raises(ConfigError, match="at most 8000"):
        normalise_config({**example, "generation": huge})
