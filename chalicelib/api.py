"""HTTP request parsing and JSON views for the Chalice routes.

Parsing raises ``InvalidRequestError`` naming the field; app.py turns that into a 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from . import spec
from .config import Settings
from .deployment import transform_output
from .domain.project import ConfigError, check_project_name
from .domain.states import RunState
from .sagemaker import adapter_base_uri, evaluation_prefix, model_artifact_uri, run_prefix
from .service import InvalidRequestError
from .store import Page, Project, StoredRun

MAX_PAGE = 100
# A request's free text is kept in the run's history: bounded, so no run's item can be
# pushed toward DynamoDB's 400 KB.
MAX_REASON_CHARS = 1000


class PayloadTooLargeError(spec.TuneloopError, ValueError):
    pass


def parse_body(raw: bytes | str | None, max_bytes: int) -> dict[str, Any]:
    if isinstance(raw, str):  # the limit is on bytes
        raw = raw.encode("utf-8", "surrogatepass")
    if raw is not None and len(raw) > max_bytes:
        raise PayloadTooLargeError(f"body is {len(raw)} bytes; the limit is {max_bytes}")
    if not raw:
        raise InvalidRequestError("body", "a JSON object is required")
    try:
        body = json.loads(raw, parse_constant=_not_finite, parse_float=_finite_float)
    except InvalidRequestError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError("body", f"is not valid JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # a 5,000-digit integer, nesting thousands deep
        raise InvalidRequestError("body", f"is JSON tuneloop does not take: {str(exc)[:200]}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("body", f"must be a JSON object, got {type(body).__name__}")
    return body


def _not_finite(name: str) -> Any:
    raise InvalidRequestError("body", f"{name} is not a number JSON allows; every number must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise InvalidRequestError("body", f"{text} is too large; every number must be finite")
    return value


def parse_reason(body: Mapping[str, Any], default: str, allow_empty: bool = True) -> str:
    """The body's ``reason``: a string of at most MAX_REASON_CHARS characters."""
    reason = body.get("reason", default)
    if not isinstance(reason, str) or not (reason or allow_empty):
        raise InvalidRequestError("reason", "must be a string" if allow_empty else "must be a non-empty string")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidRequestError("reason", f"must be at most {MAX_REASON_CHARS} characters, got {len(reason)}")
    return reason


def only_fields(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidRequestError(unknown[0], f"unknown field (expected {', '.join(allowed)})")


def prefixed(exc: ConfigError, prefix: str) -> InvalidRequestError:
    field = f"{prefix}.{exc.field}" if exc.field and exc.field != "body" else prefix
    return InvalidRequestError(field, exc.message)


def parse_limit(params: Mapping[str, str]) -> int:
    raw = params.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError as exc:
        raise InvalidRequestError("limit", f"must be an integer, got {raw!r}") from exc
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError("limit", f"must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


def parse_hours(params: Mapping[str, str], default: float, most: float) -> float:
    """The window a view covers, in hours: a finite number in (0, most]."""
    raw = params.get("hours")
    if raw is None:
        return default
    try:
        hours = float(raw)
    except ValueError as exc:
        raise InvalidRequestError("hours", f"must be a number, got {raw!r}") from exc
    if not math.isfinite(hours) or not 0 < hours <= most:
        raise InvalidRequestError("hours", f"must be more than 0 and at most {most:g}, got {raw}")
    return hours


def parse_state(params: Mapping[str, str]) -> RunState | None:
    raw = params.get("state")
    if raw is None:
        return None
    try:
        return RunState(raw)
    except ValueError as exc:
        raise InvalidRequestError("state", f"must be one of {', '.join(s.value for s in RunState)}") from exc


def parse_project_filter(params: Mapping[str, str]) -> str | None:
    raw = params.get("project")
    if raw is None:
        return None
    try:
        return check_project_name(raw, "project")
    except ConfigError as exc:
        raise InvalidRequestError(exc.field, exc.message) from exc


def project_view(project: Project) -> dict[str, Any]:
    return {
        "name": project.name,
        "config": project.config,
        "created_at": project.created_at.isoformat(),
        "updated_at": project.updated_at.isoformat(),
        "updated_by": project.updated_by,
        "version": project.version,
        "links": {"self": f"/projects/{project.name}", "runs": f"/runs?project={project.name}"},
    }


def run_summary(stored: StoredRun) -> dict[str, Any]:
    run = stored.run
    return {
        "run_id": run.run_id,
        "project": run.project,
        "state": run.state.value,
        "created_at": run.created_at.isoformat(),
        "updated_at": stored.updated_at.isoformat() if stored.updated_at else None,
        "parent_run_id": run.parent_run_id,
        "links": {"self": f"/runs/{run.run_id}"},
    }


def run_view(stored: StoredRun, settings: Settings) -> dict[str, Any]:
    run = stored.run
    view = run_summary(stored)
    view.update(
        {
            "dataset_uri": run.dataset_uri,
            "awaiting": run.awaiting,
            # The alarms whose retraining run waits for something new to learn from.
            "retraining_waits_for_data": list(run.waiting_for_data),
            "model_source": run.model_source,
            "package_arn": run.package_arn,
            "metrics": dict(run.metrics),
            "history": [entry.to_dict() for entry in run.history],
            "pending_commands": [
                {
                    "type": type(item.command).__name__,
                    "status": item.status,
                    "note": item.note,
                    **item.command.to_dict(),
                }
                for item in stored.pending
            ],
            # The latest decision's commands, done or not, with what executing them said
            # (the evaluate job's instance and time limit, say).
            "commands": [
                {"type": type(item.command).__name__, "status": item.status, "note": item.note}
                for item in stored.outbox
            ],
            "config": run.config,
            "version": stored.version,
        }
    )
    links = view["links"]
    links["stop"] = f"/runs/{run.run_id}/stop"
    links["project"] = f"/projects/{run.project}"
    if run.parent_run_id:
        links["parent"] = f"/runs/{run.parent_run_id}"
    if run.model_source:
        links["model_artifact"] = model_artifact_uri(settings, run, run.model_source)
    base = adapter_base_uri(run)
    if base:  # the model artifact is a LoRA adapter, served on this base model
        links["base_model_artifact"] = base
    if "evaluation" in run.metrics:
        links["evaluation_report"] = evaluation_prefix(settings, run.run_id) + "report.html"
    if any("StartTransformJob" in entry.commands for entry in run.history):
        links["transform_output"] = transform_output(settings, run.run_id)
    if any(entry.from_state is RunState.PREPARING for entry in run.history):
        # Every row prepare dropped or flagged, with its file, line and reason.
        links["prepare_report"] = f"{run_prefix(settings, run.run_id)}/prepare/report/report.json"
    return view


def page_view(page: Page, key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: items, "next_token": page.next_token}
