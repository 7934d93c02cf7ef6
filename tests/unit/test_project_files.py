"""Files that must agree with the code: infra vs. models, docs vs. table, Lambda deps."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chalicelib.domain.diagram import document
from chalicelib.models import ProjectModel, RunModel
from tests.iam import resolve

REPO = Path(__file__).resolve().parents[2]


def _indexes(model: type) -> dict[str, tuple[list[tuple[str, str]], str]]:
    out = {}
    for name, index in model._indexes.items():  # type: ignore[attr-defined]
        schema = index._get_schema()
        keys = sorted((k["AttributeName"], k["KeyType"]) for k in schema["key_schema"])
        out[name] = (sorted(keys, key=lambda k: k[1]), schema["projection"]["ProjectionType"])
    return out


def test_infra_tables_match_the_models() -> None:
    resources = json.loads((REPO / "infra" / "resources.json").read_text())["Resources"]
    runs = resources["RunsTable"]["Properties"]
    assert runs["KeySchema"] == [{"AttributeName": RunModel._hash_keyname, "KeyType": "HASH"}]
    declared = {
        gsi["IndexName"]: (
            [(k["AttributeName"], k["KeyType"]) for k in gsi["KeySchema"]],
            gsi["Projection"]["ProjectionType"],
        )
        for gsi in runs["GlobalSecondaryIndexes"]
    }
    assert declared == _indexes(RunModel)
    projects = resources["ProjectsTable"]["Properties"]
    assert projects["KeySchema"] == [{"AttributeName": ProjectModel._hash_keyname, "KeyType": "HASH"}]
    for table in (runs, projects):
        assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert table["SSESpecification"]["SSEEnabled"] is True
    bucket = resources["DataBucket"]["Properties"]
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True


def test_state_machine_doc_is_generated_from_the_table() -> None:
    assert document() in (REPO / "docs" / "state-machine.md").read_text(), "run `tuneloop docs`"


def test_lambda_requirements_stay_lean() -> None:
    names = [
        re.split(r"[=<>~\[ ]", line.strip())[0].lower()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not set(names) & {
        "torch",
        "transformers",
        "peft",
        "sagemaker",
        "moto",
        "chalice",
        "pytest",
        "numpy",
        "pandas",
    }


def test_chalice_config_traces_and_uses_the_policy_files() -> None:
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    assert config["xray"] is True and config["autogen_policy"] is False
    for stage, settings in config["stages"].items():
        raw = json.loads((REPO / ".chalice" / settings["iam_policy_file"]).read_text())
        policy = resolve(raw, stage)
        # The stage's names come from the template's Stage parameter, resolved as CloudFormation does.
        assert f"tuneloop-{stage}-runs" in json.dumps(policy)
        written = re.search(rf"(tl|tuneloop)-{stage}-(?!\d)", json.dumps(resolve(raw, "qa")))  # not the bucket
        assert written is None, f"a stage name written into the policy: {written}"
        for statement in policy["Statement"]:
            if statement["Resource"] == "*":
                # Only actions IAM cannot scope to a resource (they have no resource types).
                unscoped = (
                    "xray:PutTraceSegments",
                    "xray:PutTelemetryRecords",
                    "cloudwatch:GetMetricData",
                    "pricing:GetProducts",
                    "application-autoscaling:DescribeScalableTargets",
                    "sagemaker:ListModelPackages",
                )
                assert all(a in unscoped for a in statement["Action"]), statement["Sid"]


def test_the_package_declares_the_pins_the_code_runs_with() -> None:
    """`pip install .` installs what ships to Lambda (what the CLI needs: boto3 and the
    backend's libraries), `.[training]` what the training and serving code runs with, and
    `.[deploy]` what deploy packages with: the same pins as the requirement files, one set.
    `tuneloop --version` is pyproject's."""
    import subprocess
    import sys
    import tomllib

    from setuptools.config.pyprojecttoml import read_configuration

    def pins(path: Path) -> list[str]:
        return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]

    project = read_configuration(REPO / "pyproject.toml", expand=True)["project"]
    assert project["dependencies"] == pins(REPO / "requirements.txt")
    assert "boto3" in {p.split("==")[0] for p in project["dependencies"]}
    assert project["optional_dependencies"]["training"] == pins(REPO / "training" / "requirements.txt")
    assert project["optional_dependencies"]["deploy"] == pins(REPO / "requirements-deploy.txt")
    assert {p.split("==")[0] for p in project["optional_dependencies"]["deploy"]} == {"chalice", "sagemaker"}
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    shown = subprocess.run([sys.executable, "-m", "tuneloop.cli", "--version"], capture_output=True, text=True,
                           cwd=REPO, check=True)  # fmt: skip
    assert shown.stdout.strip() == f"tuneloop {declared}"
