"""What the local cloud takes from the template CloudFormation gets.

``infra/resources.json`` (the template ``chalice package`` merges its functions into) is
read for the local stack, its ``Fn::Sub``/``Ref``/``Fn::GetAtt`` resolved as CloudFormation
would (``audit.resolve``). The tables are created from it (keys, attributes, indexes and
their projections, billing); each event rule's pattern is the app decorator's with what it
merges in (``rule_patterns``); the execution role's policies are enforced from it
(``enforce``). Each resource type the packaged template holds is either honoured here, and
``HONOURED`` says how, or named in ``NOT_HONOURED`` with the reason, and so is each
function variable (``VARIABLES``, ``NOT_SET_VARIABLES``); ``up`` prints the count, and a
test fails when the template gains a type, a variable or a rule the local cloud does not
match or name.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .audit import resolve, stack_names
from .enforce import ACCOUNT
from .services import REPO_ROOT

TEMPLATE = REPO_ROOT / "infra" / "resources.json"

# Each resource type of the packaged template (after the SAM transform), and how the local
# cloud stands in for it.
HONOURED = {
    "AWS::DynamoDB::Table": "created in DynamoDB Local from the template's keys, attributes and indexes",
    "AWS::S3::Bucket": "the data bucket in moto, its uploads sent to the event router as EventBridge would",
    "AWS::IAM::Role": "the functions' and the execution role's policies enforced on every call they sign",
    "AWS::Lambda::Function": "each function runs in the app host with its role's credentials (no concurrency cap)",
    "AWS::Events::Rule": "the event router's rule per handler, its pattern the template's; retried 3 times here",
    "AWS::ApiGateway::RestApi": "the app host's API, with bearer-token or SigV4 (IAM) auth",
    "AWS::Serverless::Function": "each function runs in the app host with its role's credentials",
    "AWS::Serverless::Api": "the app host's API, with bearer-token or SigV4 (IAM) auth",
}
NOT_HONOURED = {
    "AWS::S3::BucketPolicy": "resource policies are not evaluated locally (identity policies are)",
    "AWS::SQS::QueuePolicy": "resource policies are not evaluated locally (identity policies are)",
    "AWS::Lambda::Permission": "resource policies are not evaluated locally (identity policies are)",
    "AWS::IAM::ManagedPolicy": "the operators' policies: the local cloud's own key (yours) is not restricted",
    "AWS::Logs::LogGroup": "logs are files under the local cloud's home (logs/)",
    "AWS::ApiGateway::Account": "API Gateway's account-wide logging role: no API Gateway locally",
    "AWS::ApiGateway::Deployment": "the app host serves the API as it is",
    "AWS::ApiGateway::Stage": "the app host serves the API as it is",
    "AWS::SNS::Topic": "notices are kept under notices/ in the bucket; nothing is published",
    "AWS::Lambda::EventInvokeConfig": "the event router retries a failed handler (router.MAX_ATTEMPTS), not by it",
    "AWS::SQS::Queue": "a handler's dead letters go to dead-letters.jsonl in the local cloud's home",
}

# Each environment variable the template gives the functions, and the local cloud's value.
VARIABLES = {
    "TUNELOOP_BUCKET": "the local cloud's bucket (up sets it)",
    "TUNELOOP_STAGE": "local (up sets it)",
    "TUNELOOP_PROJECTS_TABLE": "the template's table for the stage (chalicelib.config's default is its name)",
    "TUNELOOP_RUNS_TABLE": "the template's table for the stage (chalicelib.config's default is its name)",
    "TUNELOOP_DATASET_PREFIX": "from .chalice/config.json, as the template has it (the host sets it)",
    "POWERTOOLS_SERVICE_NAME": "from .chalice/config.json, as the template has it (the host sets it)",
    "POWERTOOLS_LOG_LEVEL": "from .chalice/config.json, as the template has it (the host sets it)",
}
# Variables (or a prefix of them) the local cloud does not take from the template, and why.
NOT_SET_VARIABLES = {
    "TUNELOOP_LIMIT_": "the local stage's own wide limits (chalicelib.domain.limits): the demo checks back to back",
    "TUNELOOP_NOTICES_TOPIC_ARN": "no SNS topic here: notices are kept under notices/ in the bucket",
    "TUNELOOP_PRICE_LIST_API": "no Price List API here: costs use the shipped price table",
}


def shared_environment() -> dict[str, str]:
    """The variables ``.chalice/config.json`` gives every function on every stage."""
    config = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    return {str(k): str(v) for k, v in config.get("environment_variables", {}).items()}


def variable_kept(name: str) -> str | None:
    """Where the local value of a template variable comes from, or why there is none;
    None for a variable the local cloud neither sets nor names."""
    if name in VARIABLES:
        return VARIABLES[name]
    return next((why for prefix, why in NOT_SET_VARIABLES.items() if name.startswith(prefix)), None)


# Resources of an honoured kind that the local cloud still does not make, by logical name.
NOT_HONOURED_RESOURCES = {
    "AccessLogsBucket": "S3 server access logs are not kept locally",
    "ApiGatewayCloudWatchRole": "API Gateway's logging role: no API Gateway locally",
}


def load(stage: str, bucket: str, region: str = "us-east-1", path: Path = TEMPLATE) -> dict[str, Any]:
    """The template's resources, resolved for one local stack."""
    template = json.loads(path.read_text())
    names = {**stack_names(stage, bucket, ACCOUNT, region), "DataBucket": bucket}
    return {name: resolve_resource(resource, names) for name, resource in template["Resources"].items()}


def resolve_resource(value: Any, names: dict[str, Any]) -> Any:
    """The intrinsics in ``value`` resolved where the local stack can; one that names what
    only AWS resolves (a queue's ARN) is kept as it is: nothing here is made from it."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("Ref", "Fn::Sub", "Fn::GetAtt"):
        try:
            return resolve(value, names)
        except (KeyError, ValueError):
            return value
    if isinstance(value, dict):
        return {k: resolve_resource(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_resource(v, names) for v in value]
    return value


def logical_id(function: str) -> str:
    """The logical ID chalice gives a function's resources (on_dataset_uploaded →
    OnDatasetUploaded); its rule's event is ``<ID>Event``."""
    return "".join(part[:1].upper() + part[1:] for part in function.split("_"))


def rule_patterns(app: Any, resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each event handler's rule pattern as the packaged template has it: the app's
    decorator's, with what the template merges into it (the data bucket's name on the
    dataset rule), merged as ``chalice package --merge-template`` merges."""
    from chalice.app import CloudWatchEventConfig

    out = {}
    for source in app.event_sources:
        if not isinstance(source, CloudWatchEventConfig):
            continue
        name = logical_id(source.name)
        events = resources.get(name, {}).get("Properties", {}).get("Events", {})
        merged = events.get(f"{name}Event", {}).get("Properties", {}).get("Pattern", {})
        out[source.name] = _merge(source.event_pattern, merged)
    return out


def _merge(base: Any, extra: Any) -> Any:
    """Objects merged member by member; anything else taken from ``extra``."""
    if isinstance(base, dict) and isinstance(extra, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in extra.items()}}
    return extra if extra is not None else base


def table_requests(resources: dict[str, Any]) -> list[dict[str, Any]]:
    """A CreateTable request for each table of the template."""
    out = []
    for resource in resources.values():
        if resource.get("Type") != "AWS::DynamoDB::Table":
            continue
        properties = resource["Properties"]
        request = {k: properties[k] for k in ("TableName", "KeySchema", "AttributeDefinitions", "BillingMode")}
        if properties.get("GlobalSecondaryIndexes"):
            request["GlobalSecondaryIndexes"] = properties["GlobalSecondaryIndexes"]
        out.append(request)
    return out


def create_tables(dynamodb: Any, resources: dict[str, Any], names: dict[str, str] | None = None) -> list[str]:
    """The template's tables that DynamoDB Local lacks, created; their names. ``names``:
    another name for a table, by the template's (a test's tables of its own)."""
    existing = set(dynamodb.list_tables().get("TableNames", []))
    created = []
    for request in table_requests(resources):
        request["TableName"] = (names or {}).get(request["TableName"], request["TableName"])
        if request["TableName"] in existing:
            continue
        dynamodb.create_table(**request)
        dynamodb.get_waiter("table_exists").wait(TableName=request["TableName"])
        created.append(request["TableName"])
    return created


def create_tables_for(config: Any, dynamodb: Any) -> list[str]:
    """The template's tables for ``config``'s stage (``chalicelib.config.Settings``), under
    the table names it is set up with."""
    resources = load(config.stage, config.bucket, config.region)
    names = {f"tuneloop-{config.stage}-projects": config.projects_table,
             f"tuneloop-{config.stage}-runs": config.runs_table}  # fmt: skip
    return create_tables(dynamodb, resources, names)


def summary(resources: dict[str, Any]) -> str:
    """One line for ``up``: how many of the template's resources the local cloud honours."""
    config = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    functions = len(config["stages"]["dev"]["lambda_functions"])
    # Untyped entries are what chalice's own resources (the functions, the API) take from
    # the merge; chalice adds those at package time.
    kinds = Counter(str(r["Type"]) for r in resources.values() if "Type" in r)
    kinds.update({"AWS::Serverless::Function": functions, "AWS::Serverless::Api": 1})
    honoured = sum(n for kind, n in kinds.items() if kind in HONOURED) - len(NOT_HONOURED_RESOURCES)
    skipped = sorted(kind.split("::", 1)[1] for kind in kinds if kind in NOT_HONOURED)
    unknown = sorted(kind for kind in kinds if kind not in HONOURED and kind not in NOT_HONOURED)
    line = (
        f"template: {honoured} of its {sum(kinds.values())} resources stood in for here; not: "
        f"{', '.join(sorted(NOT_HONOURED_RESOURCES))} and every {', '.join(skipped)}"
    )
    return line + (f"; unknown kinds: {', '.join(unknown)}" if unknown else "")
