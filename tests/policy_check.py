"""Every AWS call the app's functions make in a test, decided under that function's role.

While a handler runs through the Chalice test client (``Api.call``: the API function;
``Api.invoke(name)``: that function), each botocore call the app's code makes is
recorded; ``PolicyCheck.denied()`` then decides each under the policy the packaged
template gives that function (``.chalice/config.json``'s dev stage, resolved for the
tests' stage as CloudFormation resolves it), with ``tuneloop.local.authorization`` for
what IAM checks and ``tuneloop.local.iam`` for the decision. The tests' own names stand
in for the stack's: their tables (fresh per test) are the stack's two tables, and their
bucket is the stack's bucket.
"""

from __future__ import annotations

import contextvars
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import botocore.client

from tests.conftest import BUCKET, STAGE
from tuneloop.local.audit import decided, function_policies
from tuneloop.local.iam import Decision, Policy

REPO = Path(__file__).resolve().parents[1]
ACCOUNT, REGION = "123456789012", "us-east-1"  # moto's account; the tests' region
FUNCTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("lambda_function", default=None)


@dataclass(frozen=True)
class Call:
    function: str
    service: str
    operation: str
    params: dict[str, Any]


@cache
def function_policy(function: str) -> Policy:
    policies = function_policies(STAGE, BUCKET, ACCOUNT, REGION)
    return (policies.get(function) or policies[""])[1]


class PolicyCheck:
    def __init__(self, tables: dict[str, str]) -> None:
        # The test's table names -> the stack's (tuneloop-<stage>-projects, -runs).
        self.tables = tables
        self.calls: list[Call] = []

    def record(self, client: Any, operation: str, params: dict[str, Any]) -> None:
        function = FUNCTION.get()
        if function is None:
            return
        service = client.meta.service_model.signing_name
        self.calls.append(Call(function, service, operation, self._renamed(params)))

    def _renamed(self, params: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(params, default=str)
        for mine, stacks in self.tables.items():
            text = text.replace(f'"{mine}"', f'"{stacks}"')
        renamed: dict[str, Any] = json.loads(text)
        return renamed

    def decisions(self) -> Iterator[tuple[Call, str, str, Decision]]:
        for call in self.calls:
            logged = {"service": call.service, "operation": call.operation, "params": call.params}
            for action, resource, decision in decided(logged, function_policy(call.function), stage=STAGE,
                                                      account=ACCOUNT, region=REGION):  # fmt: skip
                yield call, action, resource, decision

    def denied(self) -> list[str]:
        return sorted({f"{call.function}: {action} on {resource}: {decision.reason}"
                       for call, action, resource, decision in self.decisions() if not decision.allowed})  # fmt: skip


class Used:
    """Across a session: each policy statement that allowed some call (least privilege)."""

    statements: ClassVar[dict[str, set[str]]] = defaultdict(set)

    @classmethod
    def add(cls, check: PolicyCheck) -> None:
        for call, _, _, decision in check.decisions():
            if decision.allowed:
                cls.statements[function_policy(call.function).name].update(decision.statements)


def recording(check: PolicyCheck) -> Callable[..., Any]:
    real = botocore.client.BaseClient._make_api_call

    def make_api_call(self: Any, operation: str, params: dict[str, Any]) -> Any:
        check.record(self, operation, params)
        return real(self, operation, params)

    return make_api_call


USAGE_DIR = Path(__file__).resolve().parents[1] / "build" / "policy-usage"


def save_usage(worker: str) -> None:
    """This process's statements that allowed something (one file per xdist worker)."""
    USAGE_DIR.mkdir(parents=True, exist_ok=True)
    (USAGE_DIR / f"{worker}.json").write_text(json.dumps({k: sorted(v) for k, v in Used.statements.items()}))


def unused_statements() -> dict[str, list[str]]:
    """Per policy the functional tests exercised: the statements no call needed."""
    used: dict[str, set[str]] = defaultdict(set)
    for path in USAGE_DIR.glob("*.json"):
        for name, sids in json.loads(path.read_text()).items():
            used[name].update(sids)
    out = {}
    for name in sorted(used):
        raw = json.loads((REPO / ".chalice" / name).read_text())
        every = [str(s.get("Sid")) for s in raw["Statement"]]
        out[name] = [sid for sid in every if sid not in used[name]]
    return out
