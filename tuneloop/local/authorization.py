"""What IAM checks for one AWS request: the actions, the resource ARNs and the condition
keys, read from a maintained reference of IAM's actions and resource types (the IAM
definition parliament ships, built from AWS's Service Authorization Reference) rather
than written out here service by service.

For ``CreateTrainingJob`` with ``{"TrainingJobName": "tl-dev-…", "RoleArn": …, "Tags": …}``
that is ``sagemaker:CreateTrainingJob`` on ``arn:aws:sagemaker:<region>:<account>:
training-job/tl-dev-…`` (the reference's ARN template, its ``${TrainingJobName}`` filled
from the request) with ``sagemaker:InstanceTypes``, ``sagemaker:MaxRuntimeInSeconds`` and
the request's tags as condition keys, plus its dependent actions: ``iam:PassRole`` on the
role (``iam:PassedToService``) and ``sagemaker:AddTags``. A request whose resource the
reference names but the request does not fill is an ``UnmappedRequest``: never allowed by
guessing.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from chalicelib.spec import TuneloopError

PARTITION = "aws"
# botocore's signing names where IAM's service prefix differs.
PREFIXES = {"monitoring": "cloudwatch", "runtime.sagemaker": "sagemaker", "sagemaker-runtime": "sagemaker"}
# S3 operations whose IAM action has another name (IAM authorizes the object or bucket).
S3_ACTIONS = {
    "HeadObject": "GetObject",
    "ListObjectsV2": "ListBucket",
    "ListObjects": "ListBucket",
    "HeadBucket": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "ListBuckets": "ListAllMyBuckets",
    "DeleteObjects": "DeleteObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "UploadPartCopy": "PutObject",
    "CopyObject": "PutObject",
    "PutBucketNotificationConfiguration": "PutBucketNotification",
    "GetBucketNotificationConfiguration": "GetBucketNotification",
    "PutBucketLifecycleConfiguration": "PutLifecycleConfiguration",
    "GetBucketLifecycleConfiguration": "GetLifecycleConfiguration",
    "DeleteBucketLifecycle": "PutLifecycleConfiguration",
    "PutBucketEncryption": "PutEncryptionConfiguration",
    "GetBucketEncryption": "GetEncryptionConfiguration",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "GetPublicAccessBlock": "GetBucketPublicAccessBlock",
}
# Other operations IAM authorizes under another action.
ACTIONS = {
    ("sagemaker", "InvokeEndpointWithResponseStream"): "InvokeEndpoint",
    ("sagemaker", "InvokeEndpointAsync"): "InvokeEndpointAsync",
}
# Where a reference placeholder's value is in the request, when not under its own name.
ALIASES = {
    "BucketName": ("Bucket",),
    "ObjectName": ("Key",),
    "AlarmName": ("AlarmName", "AlarmNames"),
    "TopicName": ("TopicArn",),
    "QueueName": ("QueueUrl",),
    "RoleNameWithPath": ("RoleArn", "RoleName"),
    "EventBusName": ("EventBusName",),
    "ScalableTargetId": (),
}
ARN_PARAMS = ("ResourceArn", "ResourceARN")
# Tagging actions a service checks on create with tags that the reference does not list.
TAGGING: dict[tuple[str, str], set[str]] = {("cloudwatch", "PutMetricAlarm"): {"cloudwatch:TagResource"}}
# Listings IAM authorizes on every resource of the type when the request names none
# (DescribeAlarms by prefix is checked on alarm:*).
LISTINGS = {("cloudwatch", "DescribeAlarms")}
ITEM_BATCHES = ("TransactWriteItems", "TransactGetItems", "BatchWriteItem", "BatchGetItem")
ROLE_PARAMS = ("RoleArn", "ExecutionRoleArn", "RoleARN")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z]+)\}")
SERVICE_PRINCIPALS = {"sagemaker": "sagemaker.amazonaws.com", "events": "events.amazonaws.com",
                      "application-autoscaling": "application-autoscaling.amazonaws.com"}  # fmt: skip


class UnmappedRequest(TuneloopError, ValueError):
    """The reference names a resource this request does not say how to fill."""


@dataclass(frozen=True)
class Access:
    action: str
    resource: str  # an ARN, or "*" for an action IAM cannot scope
    context: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)


@lru_cache(maxsize=1)
def reference() -> dict[str, dict[str, Any]]:
    """parliament's IAM definition, by service prefix (read without importing parliament)."""
    spec = importlib.util.find_spec("parliament")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the IAM reference (the parliament package) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "iam_definition.json"
    return {service["prefix"]: service for service in json.loads(path.read_text())}


def accesses(signing_name: str, operation: str, params: Mapping[str, Any], *, account: str, region: str,
             principal_account: str | None = None) -> list[Access]:  # fmt: skip
    """Each (action, resource, condition keys) IAM checks for this request."""
    prefix = PREFIXES.get(signing_name, signing_name)
    action = S3_ACTIONS.get(operation, operation) if prefix == "s3" else ACTIONS.get((prefix, operation), operation)
    if prefix == "s3" and operation == "GetObject" and params.get("VersionId"):
        action = "GetObjectVersion"
    if prefix == "dynamodb" and operation in ITEM_BATCHES:
        # Authorized item by item, each as the action it is on its own table.
        base = _context(prefix, operation, params, account, region, principal_account or account)
        return list(_dynamodb_items(operation, params, account, region, base))
    service = reference().get(prefix)
    if service is None:
        raise UnmappedRequest(f"{prefix}: no such service in the IAM reference")
    privilege = next((p for p in service["privileges"] if p["privilege"] == action), None)
    if privilege is None:
        raise UnmappedRequest(f"{prefix}:{action}: no such action in the IAM reference")
    context = _context(prefix, action, params, account, region, principal_account or account)
    out = [Access(f"{prefix}:{action}", arn, context) for arn in _resources(service, privilege, params, account,
                                                                           region)]  # fmt: skip
    if prefix == "s3" and operation in ("CopyObject", "UploadPartCopy"):
        source = str(params.get("CopySource", "")).lstrip("/").split("?", 1)[0]
        out.append(Access("s3:GetObject", f"arn:{PARTITION}:s3:::{source}", context))
    if params.get("Tags") and out:
        # Tagging on create needs the service's tagging action too, on the new resource.
        dependent = {a for r in privilege["resource_types"] for a in r.get("dependent_actions", [])}
        tagging = {a for a in dependent if a.split(":", 1)[1] in ("AddTags", "TagResource", "CreateTags")}
        tagging |= TAGGING.get((prefix, action), set())
        out += [Access(a, access.resource, context) for a in sorted(tagging) for access in out[:1]]
    if prefix != "iam":
        passed = {**context, "iam:PassedToService": SERVICE_PRINCIPALS.get(prefix, f"{prefix}.amazonaws.com")}
        roles = sorted({v for v in _under(params, ROLE_PARAMS) if isinstance(v, str)})
        out += [Access("iam:PassRole", role, passed) for role in roles]
    return out


def _resources(service: dict[str, Any], privilege: dict[str, Any], params: Mapping[str, Any], account: str,
               region: str) -> list[str]:  # fmt: skip
    for name in ARN_PARAMS:
        if isinstance(params.get(name), str):
            return [str(params[name])]
    templates = {r["resource"]: r["arn"] for r in service["resources"]}
    required: list[str] = []
    optional: list[str] = []
    for entry in privilege["resource_types"]:
        kind = entry["resource_type"]
        if not kind:
            continue
        (required if kind.endswith("*") else optional).append(kind.rstrip("*"))
    filled: dict[str, list[str]] = {}
    listing = (service["prefix"], privilege["privilege"]) in LISTINGS
    for kind in required + optional:
        arns = _given_arns(service["prefix"], kind, params) or _fill(templates.get(kind, ""), params, account, region,
                                                                     listing)  # fmt: skip
        if arns:
            filled[kind] = arns
        elif kind in required:
            raise UnmappedRequest(f"{service['prefix']}:{privilege['privilege']}: the request names no {kind}")
    if service["prefix"] == "dynamodb" and "index" in filled:
        return filled["index"]  # a query of an index is authorized on the index
    found = [arn for k in required for arn in filled[k]] or next((filled[k] for k in optional if k in filled), [])
    return found or ["*"]


def _given_arns(prefix: str, kind: str, params: Mapping[str, Any]) -> list[str]:
    """ARNs of ``kind`` the request gives whole (TopicArn, ModelPackageArn, a ModelPackageName
    that is an ARN, a QueueUrl): taken as they are, account and region included."""
    found = []
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, str):
                continue
            if key == "QueueUrl" and prefix == "sqs" and kind == "queue":
                parts = item.rstrip("/").split("/")
                host = parts[2] if len(parts) > 2 else ""
                region = next((h for h in host.split(".") if h.count("-") >= 2), "")
                if len(parts) >= 5:
                    found.append(f"arn:{PARTITION}:sqs:{region or '*'}:{parts[-2]}:{parts[-1]}")
            elif item.startswith(f"arn:{PARTITION}:{prefix}:"):
                resource = item.split(":", 5)[-1]
                if resource.split("/", 1)[0] == kind or resource.split(":", 1)[0] == kind or (
                    prefix in ("sns", "sqs") and kind in ("topic", "queue")):  # fmt: skip
                    found.append(item)
    return found


def _fill(template: str, params: Mapping[str, Any], account: str, region: str, listing: bool = False) -> list[str]:
    """The template's ARNs for this request: one per value of a placeholder the request
    gives as a list (DeleteAlarms' AlarmNames); none when a placeholder has no value."""
    if not template:
        return []
    arns = [template]
    for name in dict.fromkeys(PLACEHOLDER.findall(template)):
        fixed = {"Partition": PARTITION, "Region": region, "Account": account}
        values: list[str] = [fixed[name]] if name in fixed else []
        for key in () if values else (name, *ALIASES.get(name, ())):
            found = params.get(key)
            listed = [v for v in (found if isinstance(found, list) else [found]) if isinstance(v, str) and v]
            if listed:
                values = [v.split(":role/", 1)[-1] if name == "RoleNameWithPath" and key.endswith("Arn")
                          else v.rsplit(":", 1)[-1] if key.endswith(("Arn", "ARN")) else v for v in listed]  # fmt: skip
                break
        if not values and listing:
            values = ["*"]
        if not values:
            return []
        arns = [arn.replace("${" + name + "}", value) for arn in arns for value in values]
    return arns


def _dynamodb_items(operation: str, params: Mapping[str, Any], account: str, region: str,
                    context: Mapping[str, Any]) -> Iterator[Access]:  # fmt: skip
    def table(name: str) -> str:
        return f"arn:{PARTITION}:dynamodb:{region}:{account}:table/{name}"

    if operation in ("BatchWriteItem", "BatchGetItem"):
        action = "dynamodb:BatchWriteItem" if operation == "BatchWriteItem" else "dynamodb:BatchGetItem"
        for name in params.get("RequestItems", {}):
            yield Access(action, table(str(name)), context)
        return
    kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem",
             "Get": "GetItem"}  # fmt: skip
    for item in params.get("TransactItems", []):
        for kind, body in item.items():
            yield Access(f"dynamodb:{kinds.get(kind, kind)}", table(str(body.get("TableName", ""))), context)


def _context(prefix: str, action: str, params: Mapping[str, Any], account: str, region: str,
             principal_account: str) -> dict[str, str | tuple[str, ...]]:  # fmt: skip
    context: dict[str, str | tuple[str, ...]] = {"aws:PrincipalAccount": principal_account,
                                                 "aws:RequestedRegion": region}  # fmt: skip
    tags = params.get("Tags")
    pairs: dict[str, str] = {}
    if isinstance(tags, Mapping):
        pairs = {str(k): str(v) for k, v in tags.items()}
    elif isinstance(tags, list):
        pairs = {str(t.get("Key")): str(t.get("Value")) for t in tags if isinstance(t, Mapping)}
    for key, val in pairs.items():
        context[f"aws:RequestTag/{key}"] = val
    if pairs:
        context["aws:TagKeys"] = tuple(pairs)
    if prefix == "s3":
        context["s3:ResourceAccount"] = account
        if isinstance(params.get("Prefix"), str):
            context["s3:prefix"] = str(params["Prefix"])
    if prefix == "sagemaker":
        types = [v for v in _under(params, ("InstanceType",)) if isinstance(v, str)]
        if types:
            context["sagemaker:InstanceTypes"] = tuple(types)
        runtimes = [float(v) for v in _under(params, ("MaxRuntimeInSeconds",))
                    if isinstance(v, int | float) and not isinstance(v, bool)]  # fmt: skip
        if runtimes:
            context["sagemaker:MaxRuntimeInSeconds"] = str(max(runtimes))
    if prefix == "application-autoscaling":
        for param, key in (("ServiceNamespace", "service-namespace"), ("ScalableDimension", "scalable-dimension")):
            if isinstance(params.get(param), str):
                context[f"application-autoscaling:{key}"] = str(params[param])
    if prefix == "cloudwatch":
        if isinstance(params.get("Namespace"), str):
            context["cloudwatch:namespace"] = str(params["Namespace"])
        if action == "PutMetricAlarm":
            actions = [*params.get("AlarmActions", []), *params.get("OKActions", []),
                       *params.get("InsufficientDataActions", [])]  # fmt: skip
            if actions:
                context["cloudwatch:AlarmActions"] = tuple(str(a) for a in actions)
    if prefix == "iam" and isinstance(params.get("AWSServiceName"), str):
        context["iam:AWSServiceName"] = str(params["AWSServiceName"])
    return context


def _under(value: Any, keys: tuple[str, ...]) -> Iterator[Any]:
    """Every value under one of ``keys`` anywhere in a request (a role or an instance type
    in a nested definition)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k in keys and not isinstance(v, Mapping | list):
                yield v
            else:
                yield from _under(v, keys)
    elif isinstance(value, list):
        for v in value:
            yield from _under(v, keys)
