"""`tuneloop deploy --stage S`: from an empty account to a working stage, in one call.

1. Bootstrap what must exist before the stack: an artifacts bucket for the packaged
   functions and the template (``tuneloop-<stage>-artifacts-<account>-<region>``; private,
   encrypted, versioned), as SAM's and CDK's bootstrap make theirs.
2. Resolve the region's SageMaker images and pin them by digest (``configure.py``).
3. Package: ``chalice package`` of a copy of the app whose stage settings carry those
   images, the role and the code version (the repository's files are never written), the
   functions' zip and the template uploaded to the artifacts bucket.
4. A CloudFormation change set: its summary shown, confirmed unless ``--yes``, executed,
   the stack's events streamed as progress; on failure, the first failed event's reason.
   A change set with no changes is a no-op that says so.
5. The training code (``training/``, this version) uploaded to the stage's data bucket,
   which the stack made; then the stage profile saved (``stages.StageProfile``).

Each step talks to AWS through clients given to ``Deployer``, so a test drives it against
moto's S3 and STS and botocore's Stubber where moto has no CloudFormation for the SAM
transform.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess  # nosec B404  # chalice package, run with a fixed argument list
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import REPO_ROOT, CliError, confirmed
from .stages import StageProfile

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
DONE = ("CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE")
FAILED = ("CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "UPDATE_ROLLBACK_COMPLETE",
          "UPDATE_ROLLBACK_FAILED", "DELETE_FAILED", "UPDATE_FAILED", "IMPORT_ROLLBACK_COMPLETE")  # fmt: skip
# What the copy that is packaged needs of the repository.
APP_FILES = ("app.py", "requirements.txt", "chalicelib", ".chalice", "infra")


def artifacts_bucket(stage: str, account: str, region: str) -> str:
    return f"tuneloop-{stage}-artifacts-{account}-{region}"


def data_bucket(stage: str, account: str, region: str) -> str:
    return f"tuneloop-{stage}-{account}-{region}"  # infra/resources.json names it so


@dataclass
class Packaged:
    template: dict[str, Any]
    zip_path: Path


def chalice_package(stage: str, region: str, settings: dict[str, str], out: Path) -> Packaged:
    """``chalice package`` of a copy of the app, its stage's environment given ``settings``."""
    copy = out / "app"
    missing = [name for name in APP_FILES if not (REPO_ROOT / name).exists()]
    if missing:
        raise CliError(f"deploy packages the app from a clone of the repository; {', '.join(missing)} not found "
                       f"under {REPO_ROOT}")  # fmt: skip
    for name in APP_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "deployments"))
        else:
            copy.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    config_file = copy / ".chalice" / "config.json"
    config = json.loads(config_file.read_text())
    if stage not in config.get("stages", {}):
        raise CliError(f"stage {stage} has no entry in .chalice/config.json (it has {', '.join(config['stages'])})")
    config["stages"][stage].setdefault("environment_variables", {}).update(settings)
    config_file.write_text(json.dumps(config, indent=2))
    chalice = Path(sys.executable).with_name("chalice")
    if not chalice.exists():
        raise CliError("chalice is not installed: pip install -e '.[deploy]' (from a clone)")
    command = [str(chalice), "package", "--stage", stage, "--merge-template", "infra/resources.json", str(out / "pkg")]
    done = subprocess.run(  # nosec B603  # a fixed argument list, no shell
        command, cwd=copy, capture_output=True, text=True, env={**os.environ, "AWS_DEFAULT_REGION": region}, check=False
    )
    if done.returncode != 0:
        raise CliError(f"chalice package failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return Packaged(json.loads((out / "pkg" / "sam.json").read_text()), out / "pkg" / "deployment.zip")


def change_summary(changes: Iterable[dict[str, Any]]) -> list[str]:
    """``Add     ApiHandlerRole              AWS::IAM::Role`` per change; Replacement marked."""
    lines = []
    for change in changes:
        resource = change.get("ResourceChange") or {}
        replace = " (REPLACED)" if resource.get("Replacement") == "True" else ""
        lines.append(f"  {resource.get('Action', '?'):<8}{resource.get('LogicalResourceId', '?'):<44}"
                     f"{resource.get('ResourceType', '')}{replace}")  # fmt: skip
    return lines


@dataclass
class Deployer:
    stage: str
    region: str
    s3: Any
    sts: Any
    ecr: Any
    cloudformation: Any
    package: Callable[[str, str, dict[str, str], Path], Packaged] = chalice_package
    images: Callable[[str], dict[str, str]] | None = None
    say: Callable[[str], None] = print
    confirm: Callable[[str], bool] = lambda question: True
    poll_s: float = 5.0
    profile: str | None = None
    # API Gateway's account setting (its CloudWatch role) is one per account and region:
    # False for a second stage there (the first keeps managing it).
    api_gateway_account: bool = True
    shown_events: set[str] = field(default_factory=set)

    @property
    def stack(self) -> str:
        return f"tuneloop-{self.stage}"

    # --- 1. bootstrap --------------------------------------------------------------------

    def bootstrap(self, account: str) -> str:
        bucket = artifacts_bucket(self.stage, account, self.region)
        try:
            self.s3.head_bucket(Bucket=bucket, ExpectedBucketOwner=account)
            return bucket
        except self.s3.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise CliError(f"artifacts bucket {bucket}: {code} (is it another account's?)") from exc
        self.say(f"bootstrap: creating artifacts bucket {bucket}")
        create: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.s3.create_bucket(**create)
        self.s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        self.s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}, "BucketKeyEnabled": True}]
            },
        )
        self.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        # Replaced versions go; current packages stay (a rollback of the stack may need any).
        self.s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
            {"ID": "expire-replaced-versions", "Status": "Enabled", "Filter": {"Prefix": "packages/"},
             "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]})  # fmt: skip
        return bucket

    def check_no_leftovers(self, account: str) -> None:
        """A first deploy over the data an earlier stack of this stage kept would fail on
        its names (CloudFormation does not adopt them): say so before anything is made."""
        if self._stack_status() not in (None, "REVIEW_IN_PROGRESS"):
            return
        data = data_bucket(self.stage, account, self.region)
        try:
            self.s3.head_bucket(Bucket=data, ExpectedBucketOwner=account)
        except self.s3.exceptions.ClientError:
            return
        raise CliError(
            f"stage {self.stage}'s data from an earlier stack remains (bucket {data}, its tables): "
            f"`tuneloop destroy --stage {self.stage} --delete-data` deletes it; or deploy another stage"
        )

    # --- 2. settings ---------------------------------------------------------------------

    def settings(self, account: str, code_version: str) -> dict[str, str]:
        from . import configure

        resolve = self.images or configure.images
        try:
            images = resolve(self.region)
        except ValueError as exc:
            raise CliError(f"no SageMaker images for region {self.region}: {exc}") from exc
        values = {
            **images,
            "TUNELOOP_SAGEMAKER_ROLE_ARN": f"arn:aws:iam::{account}:role/tuneloop-{self.stage}-sagemaker-execution",
            "TUNELOOP_CODE_URI": f"s3://{data_bucket(self.stage, account, self.region)}/code/{code_version}",
        }
        try:
            return configure.pin_digests(values, self.ecr)
        except ValueError as exc:
            raise CliError(str(exc)) from exc

    # --- 3. package ----------------------------------------------------------------------

    def upload_package(self, bucket: str, packaged: Packaged) -> str:
        """Upload the zip (named by its content) and the template that points at it; the
        template's URL (CloudFormation takes bodies over 51,200 bytes only by URL)."""
        import hashlib

        digest = hashlib.sha256(packaged.zip_path.read_bytes()).hexdigest()[:16]
        key = f"packages/{digest}/deployment.zip"
        self.s3.upload_file(str(packaged.zip_path), bucket, key)
        template = packaged.template
        for resource in template.get("Resources", {}).values():
            if resource.get("Type") == "AWS::Serverless::Function":
                resource["Properties"]["CodeUri"] = f"s3://{bucket}/{key}"
        body = json.dumps(template, sort_keys=True).encode()
        template_key = f"packages/{hashlib.sha256(body).hexdigest()[:16]}/template.json"
        self.s3.put_object(Bucket=bucket, Key=template_key, Body=body)
        return f"https://{bucket}.s3.{self.region}.amazonaws.com/{template_key}"

    # --- 4. change set -------------------------------------------------------------------

    def _stack_status(self, stack: str | None = None) -> str | None:
        try:
            stacks = self.cloudformation.describe_stacks(StackName=stack or self.stack)["Stacks"]
        except self.cloudformation.exceptions.ClientError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        return str(stacks[0]["StackStatus"]) if stacks else None

    def change_set(self, template_url: str, parameters: dict[str, str]) -> bool:
        """Create, show, confirm and execute a change set; False when there is nothing to change."""
        status = self._stack_status()
        if status == "ROLLBACK_COMPLETE":  # a first create that failed: CloudFormation wants it deleted
            raise CliError(f"stack {self.stack} is ROLLBACK_COMPLETE from a failed first deploy: "
                           f"`tuneloop destroy --stage {self.stage} --region {self.region} --delete-data` (a first "
                           "deploy keeps nothing worth keeping), then deploy again")  # fmt: skip
        # A stack whose first change set was never executed is REVIEW_IN_PROGRESS: still a create.
        kind = "CREATE" if status in (None, "REVIEW_IN_PROGRESS") else "UPDATE"
        name = f"tuneloop-{time.strftime('%Y%m%d%H%M%S')}"
        self.cloudformation.create_change_set(
            StackName=self.stack, ChangeSetName=name, ChangeSetType=kind, TemplateURL=template_url,
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(parameters.items())],
            Capabilities=CAPABILITIES, Tags=[{"Key": "tuneloop:stage", "Value": self.stage}],
        )  # fmt: skip
        while True:
            described = self.cloudformation.describe_change_set(StackName=self.stack, ChangeSetName=name)
            if described["Status"] in ("CREATE_COMPLETE", "FAILED"):
                break
            time.sleep(self.poll_s)
        if described["Status"] == "FAILED":
            reason = described.get("StatusReason", "")
            self.cloudformation.delete_change_set(StackName=self.stack, ChangeSetName=name)
            if "didn't contain changes" in reason or "No updates" in reason:
                return False
            raise CliError(f"change set {name} failed: {reason}")
        changes = described.get("Changes", [])
        self.say(f"change set {name} ({kind.lower()} stack {self.stack}), {len(changes)} change(s):")
        for line in change_summary(changes):
            self.say(line)
        if not self.confirm(f"apply these {len(changes)} change(s) to stack {self.stack}"):
            self.cloudformation.delete_change_set(StackName=self.stack, ChangeSetName=name)
            raise CliError("not confirmed; the change set was deleted and nothing changed")
        self.seen_before()
        self.cloudformation.execute_change_set(StackName=self.stack, ChangeSetName=name)
        self.follow()
        return True

    def seen_before(self, stack: str | None = None) -> None:
        """Mark the stack's events so far as shown: progress and failures are this call's."""
        try:
            events = self.cloudformation.describe_stack_events(StackName=stack or self.stack)["StackEvents"]
        except self.cloudformation.exceptions.ClientError:
            return  # no stack yet: no events
        self.shown_events.update(e["EventId"] for e in events)

    def follow(self, stack: str | None = None) -> str:
        """Print the stack's new events until it settles; its final status, or CliError with
        the first failed resource's reason. ``stack``: its id, which (unlike its name) still
        finds a deleted stack."""
        started = time.time()
        mine: list[dict[str, Any]] = []
        while True:
            events = self.cloudformation.describe_stack_events(StackName=stack or self.stack)["StackEvents"]
            fresh = [e for e in reversed(events) if e["EventId"] not in self.shown_events]
            for event in fresh:
                self.shown_events.add(event["EventId"])
                mine.append(event)
                reason = f"  {event['ResourceStatusReason']}" if event.get("ResourceStatusReason") else ""
                self.say(f"  {event['ResourceStatus']:<24} {event['LogicalResourceId']:<40}{reason}")
            status = self._stack_status(stack) or "DELETE_COMPLETE"
            if status in DONE or status == "DELETE_COMPLETE":
                return status
            if status in FAILED:
                failed = [e for e in mine if e["ResourceStatus"].endswith("_FAILED")
                          and e.get("ResourceStatusReason")]  # fmt: skip
                why = f"{failed[0]['LogicalResourceId']}: {failed[0]['ResourceStatusReason']}" if failed else status
                raise CliError(f"stack {self.stack} is {status}: {why}")
            if time.time() - started > 3600:
                raise CliError(f"stack {self.stack} is still {status} after an hour")
            time.sleep(self.poll_s)

    def outputs(self) -> dict[str, str]:
        stack = self.cloudformation.describe_stacks(StackName=self.stack)["Stacks"][0]
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    # --- all of it -----------------------------------------------------------------------

    def deploy(self, work: Path) -> StageProfile:
        from .training_code import code_version, upload_code

        account = str(self.sts.get_caller_identity()["Account"])
        self.say(f"deploying stage {self.stage} to account {account}, region {self.region}")
        stages = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text()).get("stages", {})
        if self.stage not in stages:
            raise CliError(f"stage {self.stage} has no entry in .chalice/config.json (it has {', '.join(stages)})")
        self.check_no_leftovers(account)
        bucket = self.bootstrap(account)
        source = REPO_ROOT / "training"
        settings = self.settings(account, code_version(source))
        self.say("images: " + ", ".join(sorted({v.rsplit("/", 1)[-1] for k, v in settings.items() if "IMAGE" in k})))
        from . import configure

        packaged = self.package(self.stage, self.region, settings, work)
        template_url = self.upload_package(bucket, packaged)
        parameters = {
            "Stage": self.stage,
            "ImageRepositoryArns": ",".join(configure.repository_arns(settings)),
            "ManageApiGatewayAccount": "true" if self.api_gateway_account else "false",
        }
        changed = self.change_set(template_url, parameters)
        if not changed:
            self.say(f"stack {self.stack} is up to date: nothing to deploy")
        outputs = self.outputs()
        data = outputs.get("DataBucketName") or data_bucket(self.stage, account, self.region)
        code = upload_code(self.s3, source, data)
        self.say(f"training code at {code}")
        profile = StageProfile(self.stage, region=self.region, profile=self.profile, stack=self.stack,
                               api_url=outputs.get("EndpointURL"), bucket=data, account=account,
                               api_gateway_account="true" if self.api_gateway_account else "false")  # fmt: skip
        where = profile.save()
        self.say(f"stage {self.stage} is ready: {profile.api_url} (profile saved to {where})")
        return profile


def run(stage: str, region: str | None, profile: str | None, yes: bool, api_gateway_account: bool | None = None) -> int:
    from .stages import check_stage_name, session

    check_stage_name(stage)
    saved = StageProfile.load(stage)
    made = session(saved, region, profile)
    if api_gateway_account is None:  # as the last deploy of this stage had it
        api_gateway_account = saved.api_gateway_account != "false"

    deployer = Deployer(stage, made.region_name, made.client("s3"), made.client("sts"), made.client("ecr"),
                        made.client("cloudformation"), confirm=lambda question: confirmed(question, yes),
                        profile=profile, api_gateway_account=api_gateway_account)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="tuneloop-deploy-"))
    try:
        deployer.deploy(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0
