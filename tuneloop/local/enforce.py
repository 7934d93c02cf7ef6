"""IAM on the local cloud: each principal's AWS calls decided under its own policies.

A request signed with a principal's key pair (``sigv4.Credentials.principal``: a Lambda
function's role, ``function/<name>``, or the SageMaker execution role,
``role/sagemaker-execution``) is placed (``request_call``: its operation and parameters,
read from the wire as each protocol sends them) and decided (``Enforcer.check``) under that
principal's policy from the packaged template: the function's ``.chalice/policy-*.json``
file, the execution role's policy in ``infra/resources.json``, both resolved for the local
stage as CloudFormation would. A call no statement allows is refused as AWS refuses it,
naming the principal, the action and the resource. The local cloud's own key (the
operator's: the CLI, the dashboard, the services' own plumbing) is not restricted.

``TUNELOOP_LOCAL_IAM=off`` turns the check off; ``TUNELOOP_LOCAL_POLICY_DIR`` names a folder
whose ``<policy file>.json`` (or ``sagemaker-execution.json``) stands in for the template's,
so a test can take one permission away.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from .audit import decided, function_policies, resolve, stack_names
from .iam import Policy
from .services import REPO_ROOT
from .sigv4 import EXECUTION_ROLE, Credentials

log = logging.getLogger("tuneloop.iam")
ACCOUNT = "123456789012"  # moto's account: every local ARN carries it
FUNCTION = "function/"
# The execution role's policy by the name a TUNELOOP_LOCAL_POLICY_DIR file takes to stand in for it.
EXECUTION_ROLE_FILE = "sagemaker-execution.json"
OFF = frozenset({"off", "0", "false", "no"})


def function_principal(function: str) -> str:
    return FUNCTION + function


@dataclass(frozen=True)
class Denial:
    principal: str
    action: str
    resource: str
    reason: str

    def message(self, stage: str) -> str:
        """AWS's words for it, with the role each principal has on AWS."""
        kind, _, name = self.principal.partition("/")
        role = f"tuneloop-{stage}-{'sagemaker-execution' if self.principal == EXECUTION_ROLE else name}"
        session = name if kind == "function" else "SageMaker"
        return (
            f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session} is not authorized to perform: "
            f"{self.action} on resource: {self.resource} because no identity-based policy allows the "
            f"{self.action} action ({self.reason})"
        )


class Enforcer:
    """The policies of every principal of one local stack."""

    def __init__(self, policies: Mapping[str, Policy], *, stage: str, region: str) -> None:
        self.policies = dict(policies)
        self.stage = stage
        self.region = region
        self.seen: set[str] = set()  # principals whose first call was logged
        self.used: dict[str, set[str]] = {}  # policy name: the statements that allowed a call
        self.overridden: set[str] = set()  # policy names a TUNELOOP_LOCAL_POLICY_DIR file stands in for

    @classmethod
    def for_stack(cls, stage: str, bucket: str, region: str = "us-east-1",
                  override: Path | None = None) -> Enforcer:  # fmt: skip
        functions = function_policies(stage, bucket, ACCOUNT, region, override=override)
        policies = {function_principal(name): policy for name, (_, policy) in functions.items() if name}
        policies[FUNCTION] = functions[""][1]  # a function the config names no policy for
        policies[EXECUTION_ROLE] = execution_role_policy(stage, bucket, region, override)
        enforcer = cls(policies, stage=stage, region=region)
        if override is not None:
            enforcer.overridden = {p.name for p in policies.values() if (override / f"{p.name}").is_file()}
        return enforcer

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Enforcer | None:
        """The local cloud's, or None when ``TUNELOOP_LOCAL_IAM=off``."""
        env = os.environ if env is None else env
        if env.get("TUNELOOP_LOCAL_IAM", "on").strip().lower() in OFF:
            return None
        from .cloud import DEFAULT_BUCKET, STAGE

        override = env.get("TUNELOOP_LOCAL_POLICY_DIR")
        if override and not Path(override).is_dir():
            raise ValueError(f"TUNELOOP_LOCAL_POLICY_DIR={override}: no such folder")
        stage, bucket = env.get("TUNELOOP_STAGE", STAGE), env.get("TUNELOOP_BUCKET", DEFAULT_BUCKET)
        region = env.get("AWS_DEFAULT_REGION", "us-east-1")
        return cls.for_stack(stage, bucket, region, Path(override) if override else None)

    def summary(self) -> str:
        """One line for ``up``: who is held to which policies, from which files."""
        functions = sorted(p[len(FUNCTION) :] for p in self.policies if p.startswith(FUNCTION) and p != FUNCTION)
        files = {policy.name: policy for policy in self.policies.values()}
        statements = sum(len(policy.statements) for policy in files.values())
        named = ", ".join(f"{name}{' (TUNELOOP_LOCAL_POLICY_DIR)' if name in self.overridden else ''}"
                          for name in sorted(files))  # fmt: skip
        return (
            f"IAM enforced: {len(functions)} functions' roles and the SageMaker execution role, "
            f"{statements} statements in {named}"
        )

    def policy(self, principal: str) -> Policy | None:
        if principal in self.policies:
            return self.policies[principal]
        if principal.startswith(FUNCTION):
            return self.policies[FUNCTION]
        return None

    def check(self, principal: str, service: str, operation: str, params: Mapping[str, Any]) -> Denial | None:
        """None when IAM would allow the call (always, for the cloud's own key "")."""
        if not principal:
            return None
        if principal not in self.seen:
            self.seen.add(principal)
            log.info("IAM: %s's calls are decided under its policy", principal)
        policy = self.policy(principal)
        if policy is None:
            return Denial(principal, f"{service}:{operation}", "*", "no policy for this principal")
        call = {"service": service, "operation": operation, "params": params}
        allowing: set[str] = set()
        for action, resource, decision in decided(call, policy, stage=self.stage, account=ACCOUNT, region=self.region):
            if not decision.allowed:
                denial = Denial(principal, action if action != "?" else f"{service}:{operation}", resource,
                                decision.reason)  # fmt: skip
                log.warning("AccessDenied: %s: %s on %s (%s)", principal, denial.action, resource, decision.reason)
                return denial
            allowing.update(decision.statements)
        self.used.setdefault(policy.name, set()).update(allowing)
        return None

    def save_usage(self, env: Mapping[str, str] | None = None) -> None:
        """With ``TUNELOOP_LOCAL_POLICY_USAGE=<folder>``: which statements allowed this
        process's calls, as ``<folder>/<pid>.json`` ({policy: [statement ids]})."""
        folder = (os.environ if env is None else env).get("TUNELOOP_LOCAL_POLICY_USAGE")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            usage = {name: sorted(sids) for name, sids in self.used.items()}
            (Path(folder) / f"{os.getpid()}.json").write_text(json.dumps(usage))


def unused_statements(enforcer: Enforcer, folder: Path) -> dict[str, list[str]]:
    """Per policy, the statements no process's call needed (from ``save_usage``'s files)."""
    used: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.json")):
        for name, sids in json.loads(path.read_text()).items():
            used.setdefault(name, set()).update(sids)
    policies = {policy.name: policy for policy in enforcer.policies.values()}
    return {name: [s.sid for s in p.statements if s.sid not in used.get(name, set())] for name, p in policies.items()}


def execution_role_policy(stage: str, bucket: str, region: str, override: Path | None = None) -> Policy:
    """The SageMaker execution role's inline policies, from ``infra/resources.json``."""
    names = stack_names(stage, bucket, ACCOUNT, region)
    own = override / EXECUTION_ROLE_FILE if override else None
    if own is not None and own.is_file():  # a policy document, its ${DataBucket.Arn}s resolved as the template's
        return Policy.parse(EXECUTION_ROLE_FILE, resolve(json.loads(own.read_text()), names))
    template = json.loads((REPO_ROOT / "infra" / "resources.json").read_text())
    role = template["Resources"]["SageMakerExecutionRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in resolve(p["PolicyDocument"], names)["Statement"]]
    return Policy.parse(EXECUTION_ROLE_FILE, {"Version": "2012-10-17", "Statement": statements})


# The JSON-protocol services behind the local cloud, by signing name: botocore's model of
# each says which operations and parameters exist.
JSON_SERVICES = {"dynamodb": "dynamodb", "sagemaker": "sagemaker", "monitoring": "cloudwatch", "events": "events",
                 "sqs": "sqs", "application-autoscaling": "application-autoscaling"}  # fmt: skip
# Headers that say what a request does: sent twice, the check and the service could each
# read a different one.
SINGLE_HEADERS = ("x-amz-target", "content-length", "content-type", "x-amz-copy-source", "host")
_TARGET = re.compile(r"([A-Za-z0-9_]+)\.([A-Za-z0-9]+)")
_INVOCATIONS = {"invocations": "InvokeEndpoint", "async-invocations": "InvokeEndpointAsync",
                "invocations-response-stream": "InvokeEndpointWithResponseStream"}  # fmt: skip


@cache
def _model(name: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(name)


def request_call(service: str, method: str, target: str, headers: Mapping[str, Sequence[str]],
                 body: bytes) -> tuple[str, dict[str, Any]] | str:  # fmt: skip
    """(operation, parameters) of one signed request, read as the service behind it reads
    it, or why it cannot be placed (and is refused): one reading only, so no request does
    one thing under the check and another in the service."""
    for name in SINGLE_HEADERS:
        if len(headers.get(name) or ()) > 1:
            return f"{service}: the {name} header is sent more than once"
    amz_target = (headers.get("x-amz-target") or [""])[0]
    path, _, query = target.partition("?")
    if service == "s3":
        if amz_target:
            return "s3: an S3 request names no X-Amz-Target"
        placed = s3_call(method, path, query, headers, body)
        said = dict(parse_qsl(query)).get("x-id")  # botocore names some operations in the query
        if said and not isinstance(placed, str) and said != placed[0]:
            return f"s3: the query's x-id {said[:60]!r} is not the {placed[0]} the request is"
        return placed
    if service == "sagemaker" and path.startswith("/endpoints/"):
        parts = path.split("/")
        if method == "POST" and not amz_target and not query and len(parts) == 4 and parts[3] in _INVOCATIONS:
            return _INVOCATIONS[parts[3]], {"EndpointName": unquote(parts[2])}
        return f"sagemaker {method} {path[:100]}: not an endpoint invocation the local cloud can place"
    named = _TARGET.fullmatch(amz_target)
    if service not in JSON_SERVICES or named is None:
        return f"{service} {method} {path[:100]}: not a request the local cloud can place"
    if method != "POST" or path != "/" or query:
        return f"{service}: a JSON-protocol request is a POST to / with no query"
    model = _model(JSON_SERVICES[service])
    prefix, operation = named.groups()
    if prefix != model.metadata.get("targetPrefix") or operation not in model.operation_names:
        return f"{service}: {amz_target[:100]} is no operation of {model.service_name}"
    try:
        params = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        return f"{service} {operation}: the body is not JSON"
    if not isinstance(params, dict):
        return f"{service} {operation}: the body is not an object"
    unknown = _unknown_member(params, model.operation_model(operation).input_shape, "")
    if unknown:
        return f"{service} {operation}: {unknown[:200]} is not one of its parameters"
    return operation, params


def _unknown_member(value: Any, shape: Any, at: str, depth: int = 0) -> str | None:
    """The first member a request names that its operation's input shape does not: no
    field beside the real ones can name the resource the check decides on."""
    if shape is None or depth > 40:
        return None if shape is None else at or "the body"
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, item in value.items():
            member = shape.members.get(key)
            if member is None:
                return f"{at}.{key}" if at else str(key)
            found = _unknown_member(item, member, f"{at}.{key}" if at else str(key), depth + 1)
            if found:
                return found
    elif shape.type_name == "list" and isinstance(value, list):
        for n, item in enumerate(value):
            found = _unknown_member(item, shape.member, f"{at}[{n}]", depth + 1)
            if found:
                return found
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            found = _unknown_member(item, shape.value, f"{at}[{key!r}]", depth + 1)
            if found:
                return found
    return None


# The query parameters of the S3 operations the local cloud places (beyond the bucket
# sub-resources below, a presigned URL's X-Amz-* and a GET's response-* overrides).
_S3_QUERY = frozenset({"list-type", "prefix", "delimiter", "max-keys", "continuation-token", "start-after",
                       "fetch-owner", "encoding-type", "marker", "key-marker", "version-id-marker",
                       "upload-id-marker", "max-uploads", "versionId", "uploadId", "partNumber", "x-id",
                       "tagging"})  # fmt: skip
# S3 sub-resources (a query key with no value) and the operation each is, by method.
_S3_BUCKET_SUBRESOURCES = {
    "notification": {"GET": "GetBucketNotificationConfiguration", "PUT": "PutBucketNotificationConfiguration"},
    "lifecycle": {"GET": "GetBucketLifecycleConfiguration", "PUT": "PutBucketLifecycleConfiguration",
                  "DELETE": "DeleteBucketLifecycle"},
    "encryption": {"GET": "GetBucketEncryption", "PUT": "PutBucketEncryption"},
    "publicAccessBlock": {"GET": "GetPublicAccessBlock", "PUT": "PutPublicAccessBlock"},
    "versioning": {"GET": "GetBucketVersioning", "PUT": "PutBucketVersioning"},
    "versions": {"GET": "ListObjectVersions"},
    "location": {"GET": "GetBucketLocation"},
    "tagging": {"GET": "GetBucketTagging", "PUT": "PutBucketTagging", "DELETE": "DeleteBucketTagging"},
    "policy": {"GET": "GetBucketPolicy", "PUT": "PutBucketPolicy", "DELETE": "DeleteBucketPolicy"},
    "cors": {"GET": "GetBucketCors", "PUT": "PutBucketCors", "DELETE": "DeleteBucketCors"},
    "acl": {"GET": "GetBucketAcl", "PUT": "PutBucketAcl"},
    "uploads": {"GET": "ListMultipartUploads"},
    "delete": {"POST": "DeleteObjects"},
}  # fmt: skip


def _deleted_keys(body: bytes) -> list[str]:
    """The keys a DeleteObjects body names (``<Delete><Object><Key>…``); none (the request
    is then refused, unplaced) for a body with markup declarations: no DTD, entity, CDATA
    section or comment may make the keys read here differ from the ones moto deletes."""
    from xml.etree import ElementTree

    if b"<!" in body:
        return []
    try:
        root = ElementTree.fromstring(body)  # nosec B314 - no DTD or entity can be declared (above)
    except ElementTree.ParseError:
        return []
    return [e.text or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Key"]


def s3_call(method: str, path: str, query: str, headers: Mapping[str, Sequence[str]],
            body: bytes = b"") -> tuple[str, dict[str, Any]] | str:  # fmt: skip
    """An S3 request (path-style, as the local cloud's clients send) as its operation."""
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    pairs = parse_qsl(query, keep_blank_values=True)
    args = dict(pairs)
    if len(args) != len(pairs):
        return "s3: a query parameter is sent more than once"
    odd = sorted(k for k in args if k not in _S3_QUERY and k not in _S3_BUCKET_SUBRESOURCES and not k.startswith(
        ("X-Amz-", "response-")))  # fmt: skip
    if odd:
        return f"s3 {method}: the query's {odd[0][:60]!r} is not a request the local cloud can place"
    if not bucket:
        return ("ListBuckets", {}) if method == "GET" else f"s3 {method} /: not a request the local cloud can place"
    params: dict[str, Any] = {"Bucket": bucket}
    if not key:
        for name, by_method in _S3_BUCKET_SUBRESOURCES.items():
            if name in args:
                if method not in by_method:
                    break
                if name == "delete":  # each object's key is in the body
                    params["Delete"] = {"Objects": [{"Key": k} for k in _deleted_keys(body)]}
                return by_method[method], params
        else:
            if method == "GET":
                if "prefix" in args:
                    params["Prefix"] = args["prefix"]
                return ("ListObjectsV2" if args.get("list-type") == "2" else "ListObjects"), params
            operation = {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method)
            if operation:
                return operation, params
        return f"s3 {method} /{bucket}?{query[:60]}: not a request the local cloud can place"
    params["Key"] = key
    other = sorted(set(args) & set(_S3_BUCKET_SUBRESOURCES) - {"tagging", "uploads"})
    if other:
        return f"s3 {method} on an object with ?{other[0]}: not a request the local cloud can place"
    if "versionId" in args:
        params["VersionId"] = args["versionId"]
    if method in ("GET", "HEAD"):
        if "uploadId" in args:
            return "ListParts", params
        if "tagging" in args:
            return "GetObjectTagging", params
        return ("GetObject" if method == "GET" else "HeadObject"), params
    if method == "PUT":
        if "tagging" in args:
            return "PutObjectTagging", params
        copy = (headers.get("x-amz-copy-source") or [""])[0]
        if copy:
            params["CopySource"] = unquote(copy)
            return ("UploadPartCopy" if "uploadId" in args else "CopyObject"), params
        return ("UploadPart" if "uploadId" in args else "PutObject"), params
    if method == "POST":
        if "uploads" in args:
            return "CreateMultipartUpload", params
        if "uploadId" in args:
            return "CompleteMultipartUpload", params
    if method == "DELETE":
        return ("AbortMultipartUpload" if "uploadId" in args else "DeleteObject"), params
    return f"s3 {method} /{bucket}/…: not a request the local cloud can place"


def sign_as_functions(cloud: Credentials) -> None:
    """From here on, in this process, an AWS call a handler makes (``audit.invoking``) is
    signed with its function role's key pair instead of the cloud's own, as a Lambda
    function's calls carry its role's credentials."""
    import botocore.auth
    import botocore.credentials

    from .audit import FUNCTION as RUNNING

    real = botocore.auth.SigV4Auth.__init__

    def init(self: Any, credentials: Any, *args: Any, **kwargs: Any) -> None:
        function = RUNNING.get()
        if function is not None and credentials is not None and credentials.access_key == cloud.access_key:
            own = cloud.principal(function_principal(function))
            credentials = botocore.credentials.ReadOnlyCredentials(own.access_key, own.secret_key, None)
        real(self, credentials, *args, **kwargs)

    botocore.auth.SigV4Auth.__init__ = init
