"""Which AWS calls the local cloud's functions make, and whether their roles allow them.

With ``TUNELOOP_LOCAL_CALL_LOG=<file>`` the host records every botocore call the app's
code makes while a handler runs (the API's ``api_handler``, or the event and schedule
handlers by name): one JSON line each, with the function, the service, the operation and
its parameters. ``audit()`` then decides each call under the policy the packaged template
gives that function (``.chalice/config.json``'s dev stage, whose policies name the stage
by the template's ``Stage`` parameter, resolved here for the local stage, account, region
and bucket as CloudFormation would), and lists the statements no call needed.
"""

from __future__ import annotations

import contextvars
import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .authorization import UnmappedRequest, accesses
from .iam import Decision, Policy, decide
from .services import REPO_ROOT

FUNCTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("lambda_function", default=None)
_lock = threading.Lock()


@contextmanager
def invoking(function: str) -> Iterator[None]:
    token = FUNCTION.set(function)
    try:
        yield
    finally:
        FUNCTION.reset(token)


def install(path: Path) -> None:
    """Record each AWS call a handler makes in this process to ``path`` (JSON lines)."""
    import botocore.client

    real = botocore.client.BaseClient._make_api_call

    def make_api_call(self: Any, operation: str, params: dict[str, Any]) -> Any:
        function = FUNCTION.get()
        if function is not None:
            line = {"function": function, "service": self.meta.service_model.signing_name,
                    "operation": operation, "params": _plain(params)}  # fmt: skip
            with _lock, path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
        return real(self, operation, params)

    botocore.client.BaseClient._make_api_call = make_api_call


def _plain(value: Any) -> Any:
    """Parameters as JSON: a body's bytes or stream are not what IAM reads."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return f"<{type(value).__name__}>"


def resolve(value: Any, names: dict[str, Any]) -> Any:
    """The intrinsics the policies use, as CloudFormation resolves them for one stack."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "Fn::Sub" and isinstance(inner, str):
            # ${Name} is the stack's; ${!Name} the literal ${Name} (an IAM policy variable).
            def name(match: re.Match[str]) -> str:
                inside = match.group(1)
                if inside.startswith("!"):
                    return "${" + inside[1:] + "}"
                if inside not in names:
                    raise ValueError(f"Fn::Sub {inner!r}: ${{{inside}}} is no name the local stack resolves")
                return names[inside]

            return re.sub(r"\$\{([^}]*)\}", name, inner)
        if key == "Ref" and isinstance(inner, str):
            if inner not in names:
                raise ValueError(f"Ref {inner}: a name the local stack does not resolve")
            return names[inner]
        if key == "Fn::GetAtt" and isinstance(inner, list):
            return names[".".join(inner)]
    if isinstance(value, dict):
        return {k: resolve(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, names) for v in value]
    return value


@dataclass
class Audit:
    calls: int = 0
    denied: list[str] = field(default_factory=list)
    # Per policy file: the statements no call needed.
    unused: dict[str, list[str]] = field(default_factory=dict)


def stack_names(stage: str, bucket: str, account: str, region: str) -> dict[str, Any]:
    """What CloudFormation resolves the policies' ``Ref``, ``Fn::Sub`` and ``Fn::GetAtt`` to:
    the stack's own names, and each other template parameter's default."""
    template = json.loads((REPO_ROOT / "infra" / "resources.json").read_text())
    defaults: dict[str, Any] = {}
    for name, parameter in template.get("Parameters", {}).items():
        value = parameter.get("Default")
        if value is not None:
            listed = parameter.get("Type") == "CommaDelimitedList"
            defaults[name] = str(value).split(",") if listed else str(value)
    return {**defaults, "Stage": stage, "AWS::AccountId": account, "AWS::Region": region, "AWS::Partition": "aws",
            "DataBucket.Arn": f"arn:aws:s3:::{bucket}",
            "NotificationsTopic": f"arn:aws:sns:{region}:{account}:tuneloop-{stage}-notices"}  # fmt: skip


def function_policies(stage: str, bucket: str, account: str, region: str,
                      override: Path | None = None) -> dict[str, tuple[str, Policy]]:  # fmt: skip
    """Each function's (policy file, policy); ``override``: a folder whose files of the same
    names stand in for ``.chalice``'s."""
    config = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())["stages"]["dev"]
    names = stack_names(stage, bucket, account, region)
    out = {}
    functions = {"": {}, **config.get("lambda_functions", {})}  # "": any function the config lists no policy for
    for function, settings in functions.items():
        name = settings.get("iam_policy_file", config["iam_policy_file"])
        path = REPO_ROOT / ".chalice" / name
        if override is not None and (override / name).is_file():
            path = override / name
        document = resolve(json.loads(path.read_text()), names)
        out[function] = (name, Policy.parse(name, document))
    return out


def decided(call: dict[str, Any], policy: Policy, *, stage: str, account: str,
            region: str) -> Iterator[tuple[str, str, Decision]]:  # fmt: skip
    """(action, resource, IAM's decision) for each access one logged call asks for; a call
    the IAM reference cannot place is one refusal."""
    try:
        found = accesses(call["service"], call["operation"], call["params"], account=account, region=region)
    except UnmappedRequest as exc:
        yield "?", "?", Decision(False, (), f"unmapped: {exc}")
        return
    for access in found:
        context = dict(access.context)
        if access.action.startswith("application-autoscaling:") and f"/tl-{stage}-" in access.resource:
            context["aws:ResourceTag/tuneloop:stage"] = stage  # what tuneloop tags its targets with
        decision = decide([policy], access.action, access.resource, context)
        if not decision.allowed and "s3:prefix" in context:  # a listing: which part of the bucket
            prefix = context["s3:prefix"]
            decision = Decision(False, decision.statements, f"{decision.reason}, for s3:prefix {prefix!r}")
        yield access.action, access.resource, decision


def audit(path: Path, *, stage: str, bucket: str, account: str, region: str) -> Audit:
    policies = function_policies(stage, bucket, account, region)
    result = Audit()
    used: dict[str, set[str]] = defaultdict(set)
    for line in path.read_text().splitlines() if path.exists() else []:
        call = json.loads(line)
        result.calls += 1
        name, policy = policies.get(call["function"]) or policies[""]
        for action, resource, decision in decided(call, policy, stage=stage, account=account, region=region):
            if decision.allowed:
                used[name].update(decision.statements)
            else:
                result.denied.append(f"{call['function']}: {action} on {resource}: {decision.reason}")
    for name, policy in {n: p for n, p in policies.values()}.items():
        result.unused[name] = [s.sid for s in policy.statements if s.sid not in used[name]]
    result.denied = sorted(set(result.denied))
    return result
