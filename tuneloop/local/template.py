"""What the local cloud takes from the template CloudFormation gets.

``infra/resources.json`` (the template ``chalice package`` merges its functions into) is
read for the local stack, its ``Fn::Sub``/``Ref``/``Fn::GetAtt`` resolved as CloudFormation
would (``audit.resolve``). The tables are created from it (keys, attributes, indexes and
their projections, billing); the execution role's policies are enforced from it
(``enforce``). Each resource type the packaged template holds is either honoured here, and
``HONOURED`` says how, or named in ``NOT_HONOURED`` with the reason; ``up`` prints the
count of each, and a test fails when the template gains a type in neither.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .audit import resolve, stack_names
from .services import REPO_ROOT

TEMPLATE = REPO_ROOT / "infra" / "resources.json"
ACCOUNT = "123456789012"

# Each resource type of the packaged template (after the SAM transform), and how the local
# cloud stands in for it.
HONOURED = {
    "AWS::DynamoDB::Table": "created in DynamoDB Local from the template's keys, attributes and indexes",
    "AWS::S3::Bucket": "the data bucket in moto, its uploads sent to the event router as EventBridge would",
    "AWS::IAM::Role": "the functions' and the execution role's policies enforced on every call they sign",
    "AWS::Lambda::Function": "each function runs in the app host with its role's credentials",
    "AWS::Events::Rule": "the event router builds each handler's rule from the app's decorators, as chalice does",
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


def resolve_resource(resource: dict[str, Any], names: dict[str, Any]) -> dict[str, Any]:
    """A resource with the intrinsics of its properties resolved where the local stack can;
    one whose properties name what only AWS resolves keeps them (it is not created here)."""
    try:
        return dict(resolve(resource, names))
    except (KeyError, ValueError):
        return resource


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


def create_tables(dynamodb: Any, resources: dict[str, Any]) -> list[str]:
    """The template's tables that DynamoDB Local lacks, created; their names."""
    existing = set(dynamodb.list_tables().get("TableNames", []))
    created = []
    for request in table_requests(resources):
        if request["TableName"] in existing:
            continue
        dynamodb.create_table(**request)
        dynamodb.get_waiter("table_exists").wait(TableName=request["TableName"])
        created.append(request["TableName"])
    return created


def summary(resources: dict[str, Any]) -> str:
    """One line for ``up``: how many of the template's resources the local cloud honours."""
    config = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    functions = len(config["stages"]["dev"]["lambda_functions"])
    # Untyped entries are what chalice's own resources (the functions, the API) take from
    # the merge; chalice adds those at package time.
    kinds = Counter(str(r["Type"]) for r in resources.values() if "Type" in r)
    kinds.update({"AWS::Serverless::Function": functions, "AWS::Serverless::Api": 1})
    honoured = sum(n for kind, n in kinds.items() if kind in HONOURED) - len(NOT_HONOURED_RESOURCES)
    skipped = sorted({kind.split("::", 1)[1] for kind in kinds if kind in NOT_HONOURED} | set(NOT_HONOURED_RESOURCES))
    unknown = sorted(kind for kind in kinds if kind not in HONOURED and kind not in NOT_HONOURED)
    line = f"template: {honoured} of {sum(kinds.values())} resources stood in for; not here: {', '.join(skipped)}"
    return line + (f"; unknown kinds: {', '.join(unknown)}" if unknown else "")
