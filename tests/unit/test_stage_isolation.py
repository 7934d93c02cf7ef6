"""Two stages in one account and region never touch each other: every name a stage makes
carries the stage, and each stage's policies allow only its own names."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from chalicelib.domain import names
from tests.iam import ACCOUNT, BUCKET_ARN, REGION, REPO, allowed, resolve

RUN = "abcdefghijkl"


def made_by(stage: str) -> dict[str, str]:
    """An ARN of each kind of resource a run of ``stage`` makes, by the names the code makes."""
    endpoint = names.endpoint_name("demo", stage=stage)
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    return {
        "processing-job": f"{arn}:processing-job/{names.job_name(RUN, 'prepare', stage=stage)}",
        "training-job": f"{arn}:training-job/{names.job_name(RUN, 'train', 2, stage=stage)}",
        "hyper-parameter-tuning-job": f"{arn}:hyper-parameter-tuning-job/{names.job_name(RUN, 'tune', stage=stage)}",
        "transform-job": f"{arn}:transform-job/{names.job_name(RUN, 'transform', stage=stage)}",
        "model": f"{arn}:model/{names.job_name(RUN, 'model', stage=stage)}",
        "endpoint-config": f"{arn}:endpoint-config/{names.job_name(RUN, 'config', stage=stage)}",
        "endpoint": f"{arn}:endpoint/{endpoint}",
        "model-package-group": f"{arn}:model-package-group/{endpoint}",
        "model-package": f"{arn}:model-package/{endpoint}/3",
        "alarm": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:" + names.drift_alarm_name(RUN, "psi", stage=stage),
    }  # fmt: skip


def kind(pattern: str) -> str:
    return "alarm" if ":alarm:" in pattern else pattern.split(":", 5)[-1].split("/", 1)[0]


@pytest.mark.parametrize(
    "policy_file", ["policy-dev.json", "policy-dev-starter.json", "policy-prod.json", "policy-prod-starter.json"]
)
def test_a_stages_functions_may_act_on_its_own_resources_and_on_no_other_stages(policy_file: str) -> None:
    stage = policy_file.split("-")[1].removesuffix(".json")
    policy = resolve(json.loads((REPO / ".chalice" / policy_file).read_text()), stage)
    own, checked = made_by(stage), 0
    strangers = [made_by(other) for other in ("prod" if stage == "dev" else "dev", "qa", "")]
    for statement in policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for pattern in resources:
            if not re.search(r"[/:]tl-", pattern):
                continue
            assert f"tl-{stage}-*" in pattern, f"{policy_file} {statement['Sid']}: {pattern} is not the stage's own"
            for action in actions:
                assert allowed(policy, action, own[kind(pattern)]), (statement["Sid"], action, own[kind(pattern)])
                for stranger in strangers:  # another stage's, and a name made before stages were in names
                    assert not allowed(policy, action, stranger[kind(pattern)]), (action, stranger[kind(pattern)])
                checked += 1
    assert checked > (2 if "starter" in policy_file else 30)


def test_the_template_denies_approving_only_the_stages_own_packages() -> None:
    template = json.loads((REPO / "infra" / "resources.json").read_text())
    text = json.dumps(template["Resources"])
    assert "model-package/tl-*" not in text and "model-package/tl-${Stage}-*" in text


def test_names_carry_the_stage_and_are_read_back_whatever_the_stage() -> None:
    assert names.job_name(RUN, "tune", stage="abcdefgh") == f"tl-abcdefgh-{RUN}-tune-1"  # 31 characters: fits 32
    for stage in ("dev", "prod", "local", "abcdefgh", ""):
        name = names.job_name(RUN, "train", 3, stage=stage)
        assert names.parse_job_name(name) == (RUN, "train", 3)
        assert names.run_id_from_name(names.drift_alarm_name(RUN, "x", stage=stage)) == RUN
        assert names.is_monitoring_alarm_of(names.quality_alarm_name(RUN, "accuracy", stage=stage), RUN)
        assert names.monitored(names.drift_alarm_name(RUN, "prediction_psi", stage=stage)) == "drift in prediction_psi"
    assert names.run_id_from_name(names.endpoint_name("abcdefghijkl", stage="dev")) is None
    with pytest.raises(ValueError, match="stage 'Dev'"):
        names.job_name(RUN, "train", stage="Dev")


def test_every_name_the_shipped_code_makes_is_given_its_stage() -> None:
    """A name made without its stage is one the stage's policies deny on AWS."""
    import ast

    makers = {"job_name", "endpoint_name", "drift_alarm_name", "quality_alarm_name", "drift_dimensions"}
    missing = []
    for path in [REPO / "app.py", *sorted((REPO / "chalicelib").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if called in makers and "stage" not in {k.arg for k in node.keywords}:
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno} {called}")
    assert not missing, missing


@pytest.mark.parametrize(
    "policy_file", ["policy-dev.json", "policy-dev-starter.json", "policy-prod.json", "policy-prod-starter.json"]
)
def test_every_function_that_may_start_a_run_may_read_what_the_month_cost(policy_file: str) -> None:
    """The budget is checked wherever a run starts (the API, a drop, an alarm): each of
    those functions reads every job of the month and prices it."""
    stage = policy_file.split("-")[1].removesuffix(".json")
    policy = resolve(json.loads((REPO / ".chalice" / policy_file).read_text()), stage)
    own = made_by(stage)
    cache = f"{BUCKET_ARN}/prices/eu-west-1.json"  # the stack's own bucket, resolved
    calls = [
        ("sagemaker:DescribeProcessingJob", own["processing-job"]),
        ("sagemaker:DescribeTrainingJob", own["training-job"]),
        ("sagemaker:ListTrainingJobsForHyperParameterTuningJob", own["hyper-parameter-tuning-job"]),
        ("sagemaker:DescribeTransformJob", own["transform-job"]),
        ("pricing:GetProducts", "*"),
        ("s3:GetObject", cache),
        ("s3:PutObject", cache),
    ]
    assert [call for call in calls if not allowed(policy, *call)] == []


@pytest.mark.parametrize("policy_file", ["policy-dev.json", "policy-prod.json"])
def test_a_stage_scales_only_the_scalable_targets_tagged_with_its_stage(policy_file: str) -> None:
    """Application Auto Scaling's ARNs carry no names (scalable-target/<id>): the stage is
    a tag set when the target is registered, and the policies read it (every action here
    takes aws:ResourceTag on its scalable target; parliament's IAM definition, checked in
    test_iam_lint, knows which condition keys each action takes)."""
    from chalicelib.deployment import STAGE_TAG, autoscaling_requests
    from tests.unit.test_sagemaker_requests import tuning_run

    stage = policy_file.split("-")[1].removesuffix(".json")
    other = "prod" if stage == "dev" else "dev"
    policy = resolve(json.loads((REPO / ".chalice" / policy_file).read_text()), stage)
    target = f"arn:aws:application-autoscaling:{REGION}:{ACCOUNT}:scalable-target/056e1a2b3c"
    ns = {"application-autoscaling:service-namespace": "sagemaker"}
    request, _ = autoscaling_requests(dataclasses.replace(tuning_run(), stage=stage))
    assert request["Tags"][STAGE_TAG] == stage

    def may(action: str, **tags: str) -> bool:
        context = {**ns, **{f"aws:{kind}/{STAGE_TAG}": value for kind, value in tags.items()}}
        return allowed(policy, f"application-autoscaling:{action}", target, context)

    # Registering a new target (tagged on create) and updating its own; never another's.
    assert may("RegisterScalableTarget", RequestTag=stage) and may("TagResource", RequestTag=stage)
    assert may("RegisterScalableTarget", RequestTag=stage, ResourceTag=stage)
    assert not may("RegisterScalableTarget", RequestTag=stage, ResourceTag=other)
    assert not may("RegisterScalableTarget", RequestTag=other) and not may("RegisterScalableTarget")
    for action in ("PutScalingPolicy", "DeregisterScalableTarget"):
        assert may(action, ResourceTag=stage), action
        assert not may(action, ResourceTag=other) and not may(action), action
    ecs = {"application-autoscaling:service-namespace": "ecs", f"aws:ResourceTag/{STAGE_TAG}": stage}
    assert not allowed(policy, "application-autoscaling:PutScalingPolicy", target, ecs)
