"""IAM's decision for one request under a principal's identity policies, as AWS makes it.

The local cloud's principals (each function's role, the SageMaker execution role, the
operator) carry the policies the packaged template gives them; every AWS call is decided
here: an explicit Deny wins, then any Allow, else the implicit deny. A statement applies
when its ``Action``/``NotAction``, ``Resource``/``NotResource`` and every ``Condition``
match. Conditions follow IAM's rules: operators (String*, Numeric*, Bool, Null, Arn*,
each with ``...IfExists``), ``ForAnyValue:``/``ForAllValues:`` for keys with several
values, several values of a key OR'ed, several keys and operators AND'ed, a key the
request lacks failing a test unless the operator is negated, ``IfExists`` or
``ForAllValues``; policy variables (``${aws:PrincipalAccount}``) filled from the request.

moto's IAM check was the first candidate; it treats an Allow statement whose condition
does not hold as an explicit Deny (``access_control.IAMPolicyStatement``), which would
refuse every request a conditioned statement does not cover even when another allows it,
so the decision is made here, and tested against IAM's documented cases.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from chalicelib.spec import TuneloopError

# What a request tells the policies: each condition key's value(s).
Context = Mapping[str, str | Sequence[str]]
VARIABLE = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # The statements that decided: the Deny that refused, or every Allow that matched.
    statements: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Statement:
    sid: str
    effect: str
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    not_resources: tuple[str, ...] = ()
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], index: int, policy: str = "") -> Statement:
        def listed(key: str) -> tuple[str, ...]:
            value = raw.get(key)
            if value is None:
                return ()
            return tuple(str(v) for v in (value if isinstance(value, list) else [value]))

        sid = str(raw.get("Sid") or f"{policy}#{index}")
        effect = str(raw.get("Effect", ""))
        if effect not in ("Allow", "Deny"):
            raise ValueError(f"statement {sid}: Effect must be Allow or Deny, not {effect!r}")
        if ("Action" in raw) == ("NotAction" in raw) or ("Resource" in raw) == ("NotResource" in raw):
            raise ValueError(f"statement {sid}: one of Action/NotAction and one of Resource/NotResource")
        conditions = raw.get("Condition") or {}
        if not isinstance(conditions, Mapping):
            raise ValueError(f"statement {sid}: Condition must be an object")
        return cls(sid, effect, listed("Action"), listed("NotAction"), listed("Resource"), listed("NotResource"),
                   conditions)  # fmt: skip


@dataclass(frozen=True)
class Policy:
    name: str
    statements: tuple[Statement, ...]

    @classmethod
    def parse(cls, name: str, document: Mapping[str, Any]) -> Policy:
        raw = document.get("Statement", [])
        listed = raw if isinstance(raw, list) else [raw]
        return cls(name, tuple(Statement.parse(s, i, name) for i, s in enumerate(listed)))


def decide(policies: Iterable[Policy], action: str, resource: str, context: Context | None = None) -> Decision:
    """IAM's answer for ``action`` on ``resource`` (an ARN, or ``*`` for actions that take
    none) under these identity policies."""
    context = context or {}
    allows: list[str] = []
    for policy in policies:
        for statement in policy.statements:
            if not _applies(statement, action, resource, context):
                continue
            if statement.effect == "Deny":
                return Decision(
                    False, (statement.sid,), f"explicitly denied by {policy.name} statement {statement.sid}"
                )
            allows.append(statement.sid)
    if allows:
        return Decision(True, tuple(allows))
    return Decision(False, (), "no statement allows it")


def _applies(statement: Statement, action: str, resource: str, context: Context) -> bool:
    if statement.actions:
        if not any(_action_matches(p, action) for p in statement.actions):
            return False
    elif any(_action_matches(p, action) for p in statement.not_actions):
        return False
    if statement.resources:
        if not any(_resource_matches(p, resource, context) for p in statement.resources):
            return False
    elif any(_resource_matches(p, resource, context) for p in statement.not_resources):
        return False
    return all(
        _condition(operator, key, values, context)
        for operator, tests in statement.conditions.items()
        for key, values in (tests.items() if isinstance(tests, Mapping) else ())
    )


@lru_cache(maxsize=4096)  # a policy's patterns are few, and asked for on every call
def _wildcard(pattern: str, *, case: bool) -> re.Pattern[str]:
    """IAM's wildcards: ``*`` any run of characters (``/`` and ``:`` included), ``?`` one."""
    literal = {"\x01": re.escape("*"), "\x02": re.escape("?")}
    body = "".join(".*" if c == "*" else "." if c == "?" else literal.get(c) or re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", 0 if case else re.IGNORECASE)


def _action_matches(pattern: str, action: str) -> bool:
    return bool(_wildcard(pattern, case=False).match(action))  # action names are case-insensitive


def _arn_matches(pattern: str, arn: str) -> bool:
    return pattern == "*" or bool(_wildcard(pattern, case=True).match(arn))


def _resource_matches(pattern: str, resource: str, context: Context) -> bool:
    try:
        return _arn_matches(_fill(pattern, context), resource)
    except Unresolved:
        return False  # a variable with no value in the request matches nothing


class Unresolved(TuneloopError):
    """A policy variable the request has no value for: the element it is in does not match."""


def _lookup(context: Context, key: str) -> str | Sequence[str] | None:
    """A condition key's value: IAM reads key names case-insensitively."""
    if key in context:
        return context[key]
    lowered = key.lower()
    return next((v for k, v in context.items() if k.lower() == lowered), None)


def _fill(text: str, context: Context) -> str:
    """Policy variables from the request's keys; IAM's escapes ``${*}``, ``${?}``, ``${$}``
    and defaults ``${key, 'value'}``. A value is literal (its ``*`` is no wildcard here:
    the caller escapes); a variable with no value and no default raises Unresolved."""
    if "${" not in text:
        return text

    def value(match: re.Match[str]) -> str:
        inner = match.group(1)
        if inner in ("*", "?", "$"):
            return ESCAPED[inner]
        name, _, default = inner.partition(",")
        found = _lookup(context, name.strip())
        if isinstance(found, str):
            return found.replace("*", "\x01").replace("?", "\x02")
        if default.strip().startswith("'") and default.strip().endswith("'") and len(default.strip()) >= 2:
            return default.strip()[1:-1]
        raise Unresolved(name)

    return VARIABLE.sub(value, text)


# Escaped characters and a variable's own * and ? stand for themselves, not for wildcards.
ESCAPED = {"*": "\x01", "?": "\x02", "$": "$"}


def _values(value: Any) -> list[str]:
    listed = value if isinstance(value, list) else [value]
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in listed]


NEGATED = ("StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "NumericNotEquals", "ArnNotEquals",
           "ArnNotLike")  # fmt: skip


def _condition(operator: str, key: str, wanted: Any, context: Context) -> bool:
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    try:
        patterns = [_fill(p, context) for p in _values(wanted)]
    except Unresolved:
        return False  # IAM: a condition whose variable has no value does not hold
    present = _lookup(context, key)
    if base == "Null":
        return (present is None) == (patterns[0].lower() == "true")
    actual = [] if present is None else [present] if isinstance(present, str) else [str(v) for v in present]
    if qualifier == "ForAllValues":
        return all(_test(base, a, patterns) for a in actual)  # no values: vacuously true
    if qualifier == "ForAnyValue":
        return any(_test(base, a, patterns) for a in actual)  # no values: false, negated or not
    if not actual:
        return if_exists or base in NEGATED
    return any(_test(base, a, patterns) for a in actual)


def _arn_parts_match(pattern: str, arn: str) -> bool:
    """ArnLike/ArnEquals: each of an ARN's six colon-separated parts matched on its own
    (the last, the resource, may hold colons)."""
    wanted, got = pattern.split(":", 5), arn.split(":", 5)
    if len(wanted) != 6 or len(got) != 6:
        return False
    return all(_wildcard(w, case=True).match(g) for w, g in zip(wanted, got, strict=True))


def _test(base: str, actual: str, patterns: list[str]) -> bool:
    if base in NEGATED:
        return not _test(base.replace("Not", "", 1), actual, patterns)
    if base == "StringEquals":
        return actual in patterns
    if base == "StringEqualsIgnoreCase":
        return actual.lower() in (p.lower() for p in patterns)
    if base == "StringLike":
        return any(_wildcard(p, case=True).match(actual) for p in patterns)
    if base in ("ArnLike", "ArnEquals"):
        return any(_arn_parts_match(p, actual) for p in patterns)
    if base == "Bool":
        return actual.lower() in (p.lower() for p in patterns)
    if base.startswith("Numeric"):
        try:
            number = float(actual)
            limits = [float(p) for p in patterns]
        except ValueError:
            return False
        compare = {"NumericEquals": number.__eq__, "NumericLessThan": number.__lt__,
                   "NumericLessThanEquals": number.__le__, "NumericGreaterThan": number.__gt__,
                   "NumericGreaterThanEquals": number.__ge__}.get(base)  # fmt: skip
        if compare is None:
            raise ValueError(f"condition operator {base} is not one IAM has")
        return any(compare(limit) for limit in limits)
    raise ValueError(f"condition operator {base} is not evaluated here")
