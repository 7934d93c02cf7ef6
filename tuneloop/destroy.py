"""`tuneloop destroy --stage S`: every run-time resource of the stage, then its stack.

Through the stage's API: runs on their way are stopped, runs waiting for approval
rejected, and each project deleted with its registered versions (what `project delete
--delete-models` deletes). Then, for a deployed stage, the CloudFormation stack, its
events streamed. The data the stack retains (the data and access-log buckets, the tables,
the artifacts bucket) is kept unless ``--delete-data``, confirmed by typing the stage's
name back; at the end, what remains and what it costs a month to keep.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

from .client import Api, CliError, Target, ask, confirmed
from .stages import StageProfile

# Runs that make or wait on a job: stopped before their project is deleted.
WORKING = ("received", "preparing", "training", "tuning", "evaluating", "gating", "registering", "deploying",
           "transforming")  # fmt: skip
# List prices (USD per GB-month, us-east-1) of what a destroyed stage may keep.
S3_GB_MONTH = 0.023
DYNAMODB_GB_MONTH = 0.25
LOGS_GB_MONTH = 0.03


def pages(api: Api, path: str, key: str) -> list[dict[str, Any]]:
    """Every item of a paginated listing, following next_token to the end."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        sep = "&" if "?" in path else "?"
        query = f"{sep}limit=100" + (f"&next_token={urllib.parse.quote(token)}" if token else "")
        answer = api.call("GET", path + query)
        items += answer[key]
        token = answer.get("next_token")
        if not token:
            return items


def delete_projects(api: Api, say: Callable[[str], None]) -> dict[str, int]:
    """Stop what runs, delete every project with its versions; the count of each kind deleted."""
    totals: dict[str, int] = {}
    for project in pages(api, "/projects", "projects"):
        name = project["name"]
        for run in pages(api, f"/runs?project={urllib.parse.quote(name, safe='')}", "runs"):
            if run["state"] in WORKING:
                api.call("POST", f"/runs/{run['run_id']}/stop", {"reason": "stage destroyed"})
                say(f"  stopped run {run['run_id']} ({run['state']})")
            elif run["state"] == "pending_approval":
                api.call("POST", f"/runs/{run['run_id']}/reject", {"reason": "stage destroyed"})
                say(f"  rejected run {run['run_id']} (it was waiting for approval)")
        result = api.call("DELETE", f"/projects/{urllib.parse.quote(name, safe='')}?delete_models=true")
        deleted = {kind: len(names) for kind, names in result.get("deleted", {}).items()}
        say(f"  deleted project {name}: " + (", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(deleted.items()))
                                              or "nothing it made was left"))  # fmt: skip
        for kind, count in deleted.items():
            totals[kind] = totals.get(kind, 0) + count
        totals["projects"] = totals.get("projects", 0) + 1
    return totals


def bucket_size(s3: Any, bucket: str) -> int | None:
    """Bytes in every version of every object; None when the bucket does not exist."""
    try:
        total = 0
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            total += sum(int(v.get("Size") or 0) for v in page.get("Versions", []))
        return total
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchBucket", "404"):
            return None
        raise


def empty_and_delete(s3: Any, bucket: str) -> bool:
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                      for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]  # fmt: skip
            for start in range(0, len(doomed), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start : start + 1000], "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
        return True
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchBucket", "404"):
            return False
        raise


class StackTeardown:
    """The stack, then (with delete_data) what it retained; says what remains."""

    def __init__(self, stage: str, region: str, account: str, clients: dict[str, Any], say: Callable[[str], None],
                 poll_s: float = 5.0) -> None:  # fmt: skip
        self.stage, self.region, self.account = stage, region, account
        self.s3, self.dynamodb, self.cloudformation = clients["s3"], clients["dynamodb"], clients["cloudformation"]
        self.logs = clients["logs"]
        self.say = say
        self.poll_s = poll_s

    @property
    def retained(self) -> dict[str, list[str]]:
        from .deploy import artifacts_bucket, data_bucket

        data = data_bucket(self.stage, self.account, self.region)
        return {
            "buckets": [
                data,
                f"tuneloop-{self.stage}-logs-{self.account}-{self.region}",
                artifacts_bucket(self.stage, self.account, self.region),
            ],
            "tables": [f"tuneloop-{self.stage}-projects", f"tuneloop-{self.stage}-runs"],
        }

    def delete_stack(self) -> None:
        from .deploy import Deployer

        stack = f"tuneloop-{self.stage}"
        follower = Deployer(self.stage, self.region, self.s3, None, None, self.cloudformation, say=self.say,
                            poll_s=self.poll_s)  # fmt: skip
        try:
            stack_id = self.cloudformation.describe_stacks(StackName=stack)["Stacks"][0]["StackId"]
        except self.cloudformation.exceptions.ClientError as exc:
            if "does not exist" not in str(exc):
                raise
            self.say(f"stack {stack} does not exist")
            return
        self.say(f"deleting stack {stack}")
        follower.seen_before(stack_id)
        self.cloudformation.delete_stack(StackName=stack)
        follower.follow(stack_id)  # by id: a deleted stack is found by its id only

    def remains(self, delete_data: bool) -> list[str]:
        lines, monthly = [], 0.0
        for bucket in self.retained["buckets"]:
            if delete_data:
                if empty_and_delete(self.s3, bucket):
                    self.say(f"  deleted bucket {bucket}")
                continue
            size = bucket_size(self.s3, bucket)
            if size is not None:
                monthly += size / 1e9 * S3_GB_MONTH
                lines.append(f"bucket {bucket}: {size / 1e6:.1f} MB")
        for table in self.retained["tables"]:
            try:
                if delete_data:  # the tables are protected from deletion: lifted first, here only
                    self.dynamodb.update_table(TableName=table, DeletionProtectionEnabled=False)
                    self.dynamodb.delete_table(TableName=table)
                    self.say(f"  deleted table {table}")
                    continue
                size = int(self.dynamodb.describe_table(TableName=table)["Table"].get("TableSizeBytes") or 0)
            except self.dynamodb.exceptions.ResourceNotFoundException:
                continue
            monthly += size / 1e9 * DYNAMODB_GB_MONTH
            lines.append(f"table {table}: {size / 1e6:.1f} MB")
        for group in self.log_groups():
            if delete_data:
                self.logs.delete_log_group(logGroupName=group["logGroupName"])
                self.say(f"  deleted log group {group['logGroupName']}")
                continue
            size = int(group.get("storedBytes") or 0)
            monthly += size / 1e9 * LOGS_GB_MONTH
            lines.append(f"log group {group['logGroupName']}: {size / 1e6:.1f} MB")
        if lines:
            lines.append(f"kept data costs about ${monthly:.2f} a month (storage at us-east-1 list prices); "
                         f"`tuneloop destroy --stage {self.stage} --delete-data` deletes it")  # fmt: skip
        return lines

    def log_groups(self) -> list[dict[str, Any]]:
        """The API's access log and the functions' logs, which outlive the stack."""
        found: list[dict[str, Any]] = []
        paginator = self.logs.get_paginator("describe_log_groups")
        for prefix in (f"/tuneloop/{self.stage}/", f"/aws/lambda/tuneloop-{self.stage}-"):
            for page in paginator.paginate(logGroupNamePrefix=prefix):
                found += page.get("logGroups", [])
        return found


def run(target: Target | None, stage: str, yes: bool, delete_data: bool, stack: StackTeardown | None) -> int:
    """``stack`` is None for the local cloud, which has none; ``target`` None for a stage
    whose API never came up (its stack failed before it had outputs)."""
    say = print
    if delete_data and stack is None:
        raise CliError("--delete-data is for a deployed stage; the local cloud starts empty with `tuneloop up --clean`")
    if delete_data:
        if yes:
            raise CliError("--delete-data is confirmed by typing the stage's name, never by --yes")
        if not sys.stdin.isatty():
            raise CliError("--delete-data asks to type the stage's name back: run it at a terminal")
        if ask(f"This deletes stage {stage}'s data for good. Type the stage's name to go on: ") != stage:
            raise CliError("not confirmed; nothing was changed")
    elif not confirmed(f"destroy stage {stage}: every endpoint, job and alarm it runs, then its stack", yes):
        raise CliError("not confirmed; nothing was changed")
    say(f"destroying stage {stage}")
    totals = delete_projects(target.api, say) if target else {}
    if target is None:
        say("the stage's API is not there (a stack that never finished): no projects to delete")
    say("deleted " + (", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(totals.items())) or "no projects"))
    if stack is None:
        say("what remains: the local cloud's bucket and tables (free; `tuneloop up --clean` empties them)")
        return 0
    stack.delete_stack()
    StageProfile.path(stage).unlink(missing_ok=True)  # later --stage calls would go to an API that is gone
    lines = stack.remains(delete_data)
    say("what remains:" if lines else "nothing remains")
    for line in lines:
        say(f"  {line}")
    return 0
