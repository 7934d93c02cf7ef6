"""A stage's spending limits: checked at config time, and the same values in the Lambda
role's IAM conditions, so neither a caller nor a bug in the app can exceed them."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import Settings, SettingsError
from chalicelib.domain.limits import Limits
from chalicelib.domain.project import ConfigError, normalise_config
from tests.conftest import DEMO_CONFIG, DEMO_TUNED_CONFIG
from tests.iam import resolve

REPO = Path(__file__).resolve().parents[2]
CHALICE = json.loads((REPO / ".chalice" / "config.json").read_text())
STAGES = sorted(CHALICE["stages"])


def stage_limits(stage: str) -> Limits:
    env = {**CHALICE["environment_variables"], **CHALICE["stages"][stage]["environment_variables"]}
    return Limits.from_env(env, stage)


@pytest.mark.parametrize("stage", STAGES)
def test_every_deployed_stage_has_limits_and_the_examples_fit_them(stage: str) -> None:
    limits = stage_limits(stage)
    assert limits != Limits(stage=stage), "a deployed stage must not run on AWS's own limits"
    for example in (DEMO_CONFIG, DEMO_TUNED_CONFIG, json.loads((REPO / "examples/demo-project.json").read_text())):
        limits.check(normalise_config(example.get("config", example)))
    assert limits.allows(Settings.from_env({"TUNELOOP_BUCKET": "b"}).processing_instance_type)


OVER: list[tuple[dict[str, Any], str, str]] = [
    ({"training": {"instance_type": "ml.p5.48xlarge"}}, "training.instance_type", "not allowed on stage dev"),
    ({"training": {"instance_count": 64}}, "training.instance_count", "limit of 2 instances"),
    ({"training": {"volume_size_gb": 16384}}, "training.volume_size_gb", "limit of 100 GB"),
    ({"training": {"max_runtime_s": 28 * 86400}}, "training.max_runtime_s", "limit of 86400 seconds"),
    ({"tuning": {"max_jobs": 100, "max_parallel_jobs": 1}}, "tuning.max_jobs", "limit of 20"),
    ({"tuning": {"max_jobs": 20, "max_parallel_jobs": 20}}, "tuning.max_parallel_jobs", "limit of 2"),
    ({"deployment": {"instance_type": "ml.p4d.24xlarge"}}, "deployment.instance_type", "not allowed"),
    ({"deployment": {"max_instances": 100}}, "deployment.max_instances", "limit of 2 instances"),
    ({"retrain": {"max_per_day": 100}}, "retrain.max_per_day", "limit of 2 retraining runs"),
    ({"evaluation": {"instance_type": "ml.p4d.24xlarge"}}, "evaluation.instance_type", "not allowed"),
    ({"evaluation": {"max_runtime_s": 2 * 86400}}, "evaluation.max_runtime_s", "limit of 86400 seconds"),
]


@pytest.mark.parametrize("change,field,message", OVER)
def test_a_config_over_the_stages_limits_is_refused_naming_the_field(
    change: dict[str, Any], field: str, message: str
) -> None:
    config: dict[str, Any] = json.loads(json.dumps(DEMO_TUNED_CONFIG))
    for section, values in change.items():
        config[section] = {**config.get(section, {}), **values}
    with pytest.raises(ConfigError) as info:
        stage_limits("dev").check(normalise_config(config))
    assert info.value.field == field and message in info.value.message


def test_limits_from_the_environment_are_checked() -> None:
    assert Limits.from_env({}) == Limits()  # unset: AWS's own (the local cloud)
    with pytest.raises(ValueError, match="positive integer"):
        Limits.from_env({"TUNELOOP_LIMIT_MAX_RUNTIME_S": "-1"})
    with pytest.raises(ValueError, match="instance patterns"):
        Limits.from_env({"TUNELOOP_LIMIT_INSTANCE_TYPES": "ml.[gp]5.*"})  # IAM has no [..]
    with pytest.raises(SettingsError, match="PROCESSING_INSTANCE_TYPE"):
        Settings.from_env({"TUNELOOP_BUCKET": "b", "TUNELOOP_LIMIT_INSTANCE_TYPES": "ml.g5.*"})
    limits = Limits.from_env({"TUNELOOP_LIMIT_MAX_DRIFT_CHECKS_PER_HOUR": "4"})
    assert limits.drift_slot_s == 900
    assert Limits().drift_slot_s == 1  # unset: one forced check a second


def statements(path: Path) -> dict[str, dict[str, Any]]:
    stage = path.name.split("-")[1].removesuffix(".json")
    return {s["Sid"]: s for s in resolve(json.loads(path.read_text()), stage)["Statement"]}


def policy_files(stage: str) -> list[Path]:
    """The stage's Lambda policies: the full one, and each function's own where set."""
    files = {REPO / ".chalice" / f"policy-{stage}.json"}
    for function in CHALICE["stages"][stage].get("lambda_functions", {}).values():
        if "iam_policy_file" in function:
            files.add(REPO / ".chalice" / function["iam_policy_file"])
    return sorted(files)


@pytest.mark.parametrize("stage", STAGES)
def test_the_lambda_roles_enforce_the_same_limits(stage: str) -> None:
    """A bug that builds a bigger request than the config allows is refused by IAM."""
    limits = stage_limits(stage)
    everything: set[str] = set()
    for path in policy_files(stage):
        policy = statements(path)
        for sid, statement in policy.items():
            for action in statement["Action"]:
                everything.add(action)
                if not (action.startswith("sagemaker:Create") and action.endswith(("Job", "EndpointConfig"))):
                    continue
                condition = statement["Condition"]
                assert condition["ForAllValues:StringLike"]["sagemaker:InstanceTypes"] == list(limits.instance_types), (
                    path.name,
                    action,
                )
                if action not in ("sagemaker:CreateTransformJob", "sagemaker:CreateEndpointConfig"):
                    runtime = condition["NumericLessThanEquals"]["sagemaker:MaxRuntimeInSeconds"]
                    assert int(runtime) == limits.max_runtime_s, (path.name, action)
            if sid in ("DataBucketObjects", "DataBucketList", "FeedbackLabels"):  # the stage's bucket in this account
                assert statement["Condition"] == {"StringEquals": {"s3:ResourceAccount": "${aws:PrincipalAccount}"}}
    assert {
        "sagemaker:CreateProcessingJob", "sagemaker:CreateTrainingJob", "sagemaker:CreateHyperParameterTuningJob",
        "sagemaker:CreateTransformJob", "sagemaker:CreateEndpointConfig",
    } <= everything  # fmt: skip
    full = statements(REPO / ".chalice" / f"policy-{stage}.json")
    assert full["AlarmsWithoutActions"]["Condition"] == {"Null": {"cloudwatch:AlarmActions": "true"}}
    assert full["EndpointAutoscaling"]["Condition"] == {
        "StringEquals": {
            "application-autoscaling:service-namespace": "sagemaker",
            "aws:ResourceTag/tuneloop:stage": stage,
        }
    }
    # Processing jobs run within the runtime limit too (an evaluate job's is capped at it).
    from chalicelib.domain.waits import PROCESSING_MAX_RUNTIME_S

    assert limits.max_runtime_s >= PROCESSING_MAX_RUNTIME_S


@pytest.mark.parametrize("stage", STAGES)
def test_the_functions_that_only_start_runs_have_a_narrower_policy(stage: str) -> None:
    """One policy per function: the dataset intake, the alarm handler and the drift
    schedule only start processing jobs; each of their statements is within the full
    policy's (same resources, same conditions, fewer actions)."""
    functions = CHALICE["stages"][stage]["lambda_functions"]
    narrow = {name for name, f in functions.items() if f.get("iam_policy_file")}
    assert narrow == {"on_dataset_uploaded", "on_alarm", "check_drift"}
    full = list(statements(REPO / ".chalice" / f"policy-{stage}.json").values())
    for name in narrow:
        for statement in statements(REPO / ".chalice" / functions[name]["iam_policy_file"]).values():
            assert not any(a.startswith(("sagemaker:CreateTraining", "sagemaker:CreateEndpoint", "cloudwatch:"))
                           for a in statement["Action"]), statement  # fmt: skip
            assert any(
                set(statement["Action"]) <= set(f["Action"])
                and within(statement["Resource"], f["Resource"])
                and statement.get("Condition") == f.get("Condition")
                for f in full
            ), statement


def within(narrow: str | list[str], wide: str | list[str]) -> bool:
    """Every resource of ``narrow`` is one of ``wide``'s patterns (``…/labels/*`` is within ``…/*``)."""
    patterns = wide if isinstance(wide, list) else [wide]
    return all(
        any(fnmatch.fnmatchcase(r, p) for p in patterns) for r in (narrow if isinstance(narrow, list) else [narrow])
    )
