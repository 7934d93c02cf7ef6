"""How the CLI finds a stage: the stage profile, the AWS CLI's conventions, the stack."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from tuneloop import cli, stages
from tuneloop.client import CliError


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNELOOP_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "TUNELOOP_STAGE",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "config"


@pytest.mark.parametrize("name", ["", "Dev", "1dev", "dev-1", "toolongname", "d" * 9])
def test_a_stage_name_goes_into_resource_names_so_it_is_short_and_plain(name: str) -> None:
    with pytest.raises(CliError, match="a stage name is a lower-case letter"):
        stages.check_stage_name(name)


def test_the_stage_profile_is_the_users_own_file(config_home: Path) -> None:
    path = stages.StageProfile("dev", region="eu-west-1", api_url="https://x.execute-api/api/", bucket="b").save()
    assert path == config_home / "stages" / "dev.json" and path.stat().st_mode & 0o077 == 0
    loaded = stages.StageProfile.load("dev")
    assert (loaded.region, loaded.api_url, loaded.bucket, loaded.stack_name) == (
        "eu-west-1", "https://x.execute-api/api/", "b", "tuneloop-dev"
    )  # fmt: skip
    path.write_text("[1]")
    with pytest.raises(CliError, match="is not a JSON object"):
        stages.StageProfile.load("dev")


def test_a_stage_is_reached_with_the_profiles_credentials_and_region(tmp_path: Path) -> None:
    (tmp_path / "aws-credentials").write_text("[ops]\naws_access_key_id = AKIAOPS\naws_secret_access_key = secret\n")
    stages.StageProfile("prod", region="eu-west-1", api_url="https://abc.execute-api.eu-west-1.amazonaws.com/api/",
                        bucket="tuneloop-prod-1-eu-west-1").save()  # fmt: skip
    reached = stages.stage_target("prod", profile="ops")
    assert reached.name == "stage prod" and reached.bucket == "tuneloop-prod-1-eu-west-1"
    assert reached.api.base == "https://abc.execute-api.eu-west-1.amazonaws.com/api" and reached.api.token is None
    assert reached.api.region == "eu-west-1" and reached.api.credentials.access_key == "AKIAOPS"
    headers = reached.api._headers("GET", reached.api.base + "/runs", None)
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAOPS/")
    assert "/eu-west-1/execute-api/aws4_request" in headers["Authorization"]
    # --region wins over the stage profile's, as the AWS CLI's does.
    assert stages.stage_target("prod", region="us-west-2", profile="ops").api.region == "us-west-2"


def test_what_is_missing_is_said_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError, match="no region"):
        stages.stage_target("dev")
    with pytest.raises(CliError, match="could not be found"):
        stages.stage_target("dev", region="us-east-1", profile="nobody")
    assert cli.main(["runs", "--stage", "dev", "--region", "us-east-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tuneloop: stage dev: no AWS credentials") and err.count("\n") == 1


def test_the_api_and_bucket_come_from_the_stacks_outputs() -> None:
    cloudformation = boto3.client("cloudformation", region_name="us-east-1", aws_access_key_id="x",
                                  aws_secret_access_key="x")  # fmt: skip
    stub = Stubber(cloudformation)
    stub.add_response("describe_stacks", {"Stacks": [{
        "StackName": "tuneloop-dev", "CreationTime": "2026-12-01T00:00:00Z", "StackStatus": "UPDATE_COMPLETE",
        "Outputs": [{"OutputKey": "EndpointURL", "OutputValue": "https://a.execute-api.us-east-1.amazonaws.com/api/"},
                    {"OutputKey": "DataBucketName", "OutputValue": "tuneloop-dev-1-us-east-1"}],
    }]}, {"StackName": "tuneloop-dev"})  # fmt: skip
    stub.add_client_error("describe_stacks", "ValidationError", "Stack with id tuneloop-qa does not exist")
    with stub:
        outputs = stages.stack_outputs(cloudformation, "tuneloop-dev")
        assert outputs["DataBucketName"] == "tuneloop-dev-1-us-east-1"
        with pytest.raises(CliError, match=r"cannot read stack tuneloop-qa: .*does not exist"):
            stages.stack_outputs(cloudformation, "tuneloop-qa")


def test_tuneloop_stage_in_the_environment_picks_the_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "aws-credentials").write_text("[default]\naws_access_key_id = AKIADEF\naws_secret_access_key = s\n")
    stages.StageProfile("qa", region="us-east-2", api_url="https://q/api", bucket="bq").save()
    monkeypatch.setenv("TUNELOOP_STAGE", "qa")

    class Args:
        stage = region = profile = None

    assert stages.target(Args()).name == "stage qa"


def test_names_and_ids_travel_as_one_path_segment() -> None:
    """A project named 'demo?delete_models=true' cannot turn into a query the user never asked for."""
    from tuneloop.client import q

    assert q("demo?delete_models=true") == "demo%3Fdelete_models%3Dtrue"
    assert q("a b/../c") == "a%20b%2F..%2Fc"
