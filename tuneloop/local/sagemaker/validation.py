"""Requests checked against botocore's SageMaker service model.

botocore's client-side validation (types, required members, minimums) plus what it
leaves to the service (maximum lengths and values, enums, patterns), so a request AWS
would reject with a ``ValidationException`` is rejected here the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import botocore.exceptions
import botocore.session
from botocore.validate import ParamValidator

from .exceptions import ServiceError

_MODEL = botocore.session.get_session().get_service_model("sagemaker")
_PATTERNS: dict[str, re.Pattern[str] | None] = {}


def _pattern(source: str) -> re.Pattern[str] | None:
    if source not in _PATTERNS:
        try:
            _PATTERNS[source] = re.compile(source)
        except re.error:  # a Java-only construct: leave that one to botocore's checks
            _PATTERNS[source] = None
    return _PATTERNS[source]


def _violation(path: str, value: Any, rule: str) -> str:
    shown = f"'{value}' " if isinstance(value, (str, int)) else ""
    return f"Value {shown}at '{path}' failed to satisfy constraint: Member must {rule}"


def _constraints(value: Any, shape: Any, path: str, errors: list[str]) -> None:
    """What botocore's client-side validation leaves to the service: max, enum, pattern."""
    meta = shape.metadata
    too_long = f"have length less than or equal to {meta.get('max')}"
    if shape.type_name == "structure" and isinstance(value, Mapping):
        for name, member in shape.members.items():
            if name in value:
                _constraints(value[name], member, f"{path}.{name}" if path else name, errors)
    elif shape.type_name == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(_violation(path, None, too_long))
        for n, item in enumerate(value):
            _constraints(item, shape.member, f"{path}.{n + 1}", errors)
    elif shape.type_name == "map" and isinstance(value, Mapping):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(_violation(path, None, too_long))
        for key, item in value.items():
            _constraints(key, shape.key, f"{path}.key", errors)
            _constraints(item, shape.value, f"{path}.{key}", errors)
    elif shape.type_name == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(_violation(path, value, too_long))
        if shape.enum and value not in shape.enum:
            errors.append(_violation(path, value, f"satisfy enum value set: [{', '.join(shape.enum)}]"))
        compiled = _pattern(meta["pattern"]) if "pattern" in meta else None
        if compiled is not None and not compiled.fullmatch(value):
            errors.append(_violation(path, value, f"satisfy regular expression pattern: {meta['pattern']}"))
    elif shape.type_name in ("integer", "long") and isinstance(value, int) and "max" in meta and value > meta["max"]:
        errors.append(_violation(path, value, f"have value less than or equal to {meta['max']}"))


def validate(operation: str, params: Mapping[str, Any]) -> None:
    try:
        model = _MODEL.operation_model(operation)
    except botocore.exceptions.OperationNotFoundError as exc:
        raise ServiceError("UnknownOperationException", f"Unknown operation {operation}") from exc
    report = ParamValidator().validate(dict(params), model.input_shape)
    errors = [report.generate_report()] if report.has_errors() else []
    _constraints(params, model.input_shape, "", errors)
    if errors:
        detail = "; ".join(errors)
        raise ServiceError(
            "ValidationException", f"{len(errors)} validation error{'s' if len(errors) > 1 else ''} detected: {detail}"
        )
