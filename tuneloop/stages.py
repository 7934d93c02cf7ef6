"""Stages as the CLI reaches them: ``--stage S`` (or ``TUNELOOP_STAGE``) with the AWS
CLI's ``--profile`` and ``--region``.

A stage is one deployment of the stack. What the CLI needs to reach it (its API's URL and
its data bucket) comes from the user's stage profile, ``stages/<stage>.json`` under
``$TUNELOOP_CONFIG_HOME`` (default ``~/.config/tuneloop``), which ``tuneloop deploy``
writes; what the profile does not hold is read from the stack's outputs. Nothing about an
account lives in the repository.

The stage ``local`` is the local cloud reached the way a deployed stage is: API calls
signed with SigV4 (its IAM auth) by the local cloud's credentials, uploads through its
S3. It exercises the remote path end to end with no account.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .client import Api, CliError, Target, local_state, local_target
from .local import cloud

LOCAL = "local"
# Stage names go into every resource name a stage creates (see chalicelib.domain.names).
STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


def config_home() -> Path:
    explicit = os.environ.get("TUNELOOP_CONFIG_HOME")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "tuneloop"


@dataclass(frozen=True)
class StageProfile:
    """What the CLI keeps about a stage (all optional but the name)."""

    stage: str
    region: str | None = None
    profile: str | None = None
    stack: str | None = None
    api_url: str | None = None
    bucket: str | None = None
    account: str | None = None
    # "false" when another stage in the account and region owns API Gateway's account setting.
    api_gateway_account: str | None = None

    @property
    def stack_name(self) -> str:
        return self.stack or f"tuneloop-{self.stage}"

    @classmethod
    def path(cls, stage: str) -> Path:
        return config_home() / "stages" / f"{stage}.json"

    @classmethod
    def load(cls, stage: str) -> StageProfile:
        path = cls.path(stage)
        if not path.is_file():
            return cls(stage)
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError(f"cannot read stage profile {path}: {exc}") from exc
        if not isinstance(saved, dict):
            raise CliError(f"stage profile {path} is not a JSON object")
        known = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__ and isinstance(v, str)}
        return cls(**{**known, "stage": stage})

    def save(self) -> Path:
        path = self.path(self.stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
        return path


def check_stage_name(stage: str) -> str:
    if not STAGE_NAME_RE.match(stage or ""):
        raise CliError(f"stage {stage!r}: a stage name is a lower-case letter, then up to 7 letters or digits")
    return stage


def session(stage: StageProfile, region: str | None = None, profile: str | None = None) -> Any:
    """A boto3 session as the AWS CLI would make it: --profile and --region first, then
    the stage profile's, then the usual environment and files."""
    import boto3
    import botocore.exceptions

    try:
        made = boto3.session.Session(profile_name=profile or stage.profile, region_name=region or stage.region)
    except botocore.exceptions.ProfileNotFound as exc:
        raise CliError(str(exc)) from exc
    if not made.region_name:
        raise CliError(f"stage {stage.stage}: no region (pass --region, or set one in your AWS configuration)")
    return made


def stack_outputs(cloudformation: Any, stack: str) -> dict[str, str]:
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    except Exception as exc:  # botocore's errors: the one line they carry
        raise CliError(f"cannot read stack {stack}: {exc}") from exc
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def local_stage() -> Target:
    """The local cloud, reached as a deployed stage is: SigV4-signed API calls, S3 uploads."""
    from botocore.credentials import Credentials

    state = local_state()
    credentials = Credentials(state.credentials.access_key, state.credentials.secret_key)
    return Target(
        f"stage {LOCAL}",
        Api(state.api_url, credentials=credentials, region="us-east-1", where=f"stage {LOCAL}'s API"),
        state.bucket,
        lambda: state.client("s3"),
        None,
        f"`tuneloop drops --stage {LOCAL}` and {cloud.home() / 'logs' / 'host.log'}",
    )


def stage_target(stage: str, region: str | None = None, profile: str | None = None) -> Target:
    if stage == LOCAL:
        return local_stage()
    saved = StageProfile.load(check_stage_name(stage))
    made = session(saved, region, profile)
    credentials = made.get_credentials()
    if credentials is None:
        raise CliError(f"stage {stage}: no AWS credentials (aws configure, or --profile)")
    api_url, bucket = saved.api_url, saved.bucket
    if not api_url or not bucket:
        outputs = stack_outputs(made.client("cloudformation"), saved.stack_name)
        api_url = api_url or outputs.get("EndpointURL")
        bucket = bucket or outputs.get("DataBucketName")
        if not api_url or not bucket:
            raise CliError(f"stack {saved.stack_name} has no EndpointURL or DataBucketName output: is it tuneloop's?")
    return Target(
        f"stage {stage}",
        Api(api_url, credentials=credentials, region=made.region_name, where=f"stage {stage}'s API"),
        bucket,
        lambda: made.client("s3"),
        None,
        f"`tuneloop drops --stage {stage}` and the stage's on_dataset_uploaded logs",
    )


def target(args: Any) -> Target:
    """The command's target: ``--stage`` (or TUNELOOP_STAGE), else the local cloud."""
    stage = getattr(args, "stage", None) or os.environ.get("TUNELOOP_STAGE") or None
    if stage is None:
        return local_target()
    return stage_target(stage, getattr(args, "region", None), getattr(args, "profile", None))
