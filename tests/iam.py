"""IAM policies as tests read them: CloudFormation's intrinsics resolved for one account,
region and stage, and an identity policy's decision for one action on one resource."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ACCOUNT, REGION, STAGE = "123456789012", "eu-west-1", "dev"
BUCKET_ARN = f"arn:aws:s3:::tuneloop-{STAGE}-{ACCOUNT}-{REGION}"
API_ID = "a1b2c3d4e5"
TEMPLATE = json.loads((REPO / "infra" / "resources.json").read_text())
IMAGE_REPOSITORIES = TEMPLATE["Parameters"]["ImageRepositoryArns"]["Default"].split(",")


def resolve(value: Any, stage: str = STAGE) -> Any:
    """CloudFormation's intrinsics, as they resolve in that account and region for ``stage``
    (the data bucket is the dev stack's whatever the stage: tests compare keys in it)."""
    names = {"${AWS::Partition}": "aws", "${AWS::Region}": REGION, "${AWS::AccountId}": ACCOUNT,
             "${DataBucket.Arn}": BUCKET_ARN, "${RestAPI}": API_ID, "${Stage}": stage}  # fmt: skip
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "Fn::Sub":
            text = inner if isinstance(inner, str) else inner[0]
            for name, real in names.items():
                text = text.replace(name, real)
            return text
        if key == "Fn::GetAtt":
            assert inner == ["DataBucket", "Arn"], f"resolve() knows the data bucket's ARN only, not {inner}"
            return BUCKET_ARN
        if key == "Ref":
            topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:tuneloop-{stage}-notices"
            known = {"AWS::AccountId": ACCOUNT, "ImageRepositoryArns": IMAGE_REPOSITORIES, "NotificationsTopic": topic,
                     "Stage": stage}  # fmt: skip
            return known.get(inner, inner)
    if isinstance(value, dict):
        return {k: resolve(v, stage) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, stage) for v in value]
    return value


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allowed(policy: dict[str, Any], action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    """IAM's decision for one identity policy (resolved): an explicit Deny wins, then any
    Allow. Wildcards as IAM reads them: ``*`` any run of characters, ``/`` included.
    Conditions are read only when ``context`` (the request's condition keys) is given:
    then a key the request lacks fails its test, except under an ``...IfExists`` operator."""

    def holds(statement: dict[str, Any]) -> bool:
        if context is None:
            return True
        for operator, tests in statement.get("Condition", {}).items():
            base = operator.removesuffix("IfExists")
            for key, wanted in tests.items():
                value = context.get(key)
                if value is None:
                    if operator.endswith("IfExists"):
                        continue
                    return False
                options = _listed(wanted)
                if base == "StringEquals":
                    ok = value in options
                elif base == "StringLike":
                    ok = any(fnmatch.fnmatchcase(value, o) for o in options)
                else:
                    raise AssertionError(f"tests.iam does not evaluate {operator}")
                if not ok:
                    return False
        return True

    def matches(statement: dict[str, Any]) -> bool:
        return (
            any(fnmatch.fnmatch(action.lower(), a.lower()) for a in _listed(statement["Action"]))
            and any(fnmatch.fnmatchcase(resource, r) for r in _listed(statement["Resource"]))
            and holds(statement)
        )

    found = [s["Effect"] for s in policy["Statement"] if matches(s)]
    return "Deny" not in found and "Allow" in found
