"""tuneloop's Chalice app: routes and event handlers. Wiring only: parse → service."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from chalice import (
    BadRequestError,
    Chalice,
    ConflictError,
    IAMAuthorizer,
    NotFoundError,
    Rate,
    Response,
    TooManyRequestsError,
)
from chalice.app import BaseLambdaEvent, EventSourceHandler, Request

from chalicelib import deps
from chalicelib.api import (
    PayloadTooLargeError,
    only_fields,
    page_view,
    parse_body,
    parse_hours,
    parse_limit,
    parse_project_filter,
    parse_reason,
    parse_state,
    prefixed,
    project_view,
    run_summary,
    run_view,
)
from chalicelib.budget import SPEND_RUNS
from chalicelib.cost import month_spend
from chalicelib.domain import names
from chalicelib.domain.commands import StartChildRun
from chalicelib.domain.events import ApprovalDecided, RetrainRequested, StopRequested
from chalicelib.domain.project import ConfigError, check_project_name, project_schema
from chalicelib.domain.states import RunState
from chalicelib.endpoints import MAX_WINDOW_H
from chalicelib.events import MalformedEventError, UnknownEventError, event_id, parse_event
from chalicelib.feedback import FeedbackRefused, api_delivery, check_api_rows
from chalicelib.intake import FEEDBACK_PREFIX as FEEDBACK_DROP_PREFIX
from chalicelib.intake import IntakeIgnored, parse_feedback_created, parse_object_created
from chalicelib.observability import logger
from chalicelib.service import (
    InvalidRequestError,
    ProjectBusyError,
    ProjectNotFoundError,
    RunLimitError,
    RunNotFoundError,
    utcnow,
)
from chalicelib.store import BadPageTokenError, ProjectExistsError
from chalicelib.store import ConflictError as StoreConflictError

app = Chalice(app_name="tuneloop")
iam = IAMAuthorizer()
JSON = ["application/json"]

# The EventBridge patterns the handlers are registered with (the local event router
# delivers by these same patterns).
# Scoped to the drop prefix here and, in the packaged template (infra/resources.json), to
# the data bucket: the rule, not the handler, filters out every other bucket's uploads.
DATASET_PREFIX = "datasets/"
# Labels for captured requests (feedback) come in by the same rule and function.
FEEDBACK_PREFIX = FEEDBACK_DROP_PREFIX
DATASET_PATTERN = {
    "source": ["aws.s3"],
    "detail-type": ["Object Created"],
    "detail": {"object": {"key": [{"prefix": DATASET_PREFIX}, {"prefix": FEEDBACK_PREFIX}]}},
}
SAGEMAKER_PATTERN = {
    "source": ["aws.sagemaker"],
    "detail-type": [
        "SageMaker Processing Job State Change",
        "SageMaker Training Job State Change",
        "SageMaker HyperParameter Tuning Job State Change",
        "SageMaker Transform Job State Change",
        "SageMaker Model Package State Change",
        "SageMaker Endpoint State Change",
        "SageMaker Endpoint Deployment State Change",
    ],
}
ALARM_PATTERN = {
    "source": ["aws.cloudwatch"],
    "detail-type": ["CloudWatch Alarm State Change"],
    "detail": {"alarmName": [{"prefix": "tl-"}]},
}


class AnyEvent(BaseLambdaEvent):
    """What EventBridge delivers, unchecked: Chalice's CloudWatchEvent raises KeyError on an
    envelope that lacks a field, before the handler could log it and ignore it."""

    def _extract_attributes(self, event_dict: Any) -> None:
        pass


def _any_shape(handler: EventSourceHandler) -> EventSourceHandler:
    handler.event_class = AnyEvent
    return handler


def _http_errors(view: Callable[..., Any]) -> Callable[..., Any]:
    """Domain errors → Chalice's HTTP errors; the message names the field at fault."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except PayloadTooLargeError as exc:
            return Response({"Code": "PayloadTooLarge", "Message": str(exc)}, status_code=413)
        except (InvalidRequestError, ConfigError, BadPageTokenError) as exc:
            raise BadRequestError(str(exc)) from exc
        except ProjectNotFoundError as exc:
            raise NotFoundError(f"no project named {exc.args[0]!r}") from exc
        except RunNotFoundError as exc:
            raise NotFoundError(f"no run {exc.args[0]!r}") from exc
        except ProjectExistsError as exc:
            raise ConflictError(f"project {exc.args[0]!r} already exists") from exc
        except RunLimitError as exc:
            raise ConflictError(str(exc)) from exc
        except StoreConflictError as exc:
            raise ConflictError(f"{exc.args[0]} changed meanwhile; retry") from exc

    return wrapper


def _request() -> Request:
    """The request a route is answering (Chalice sets it before calling the route)."""
    request = app.current_request
    assert request is not None  # nosec B101  # only routes call this
    return request


def _body(allowed: tuple[str, ...]) -> dict[str, Any]:

    body = parse_body(_request().raw_body, deps.get().settings.max_body_bytes)
    only_fields(body, allowed)
    return body


def _caller() -> str:
    """Who sent this request, for the audit trail: the IAM principal API Gateway verified
    (SigV4), or ``local`` on the local cloud (its bearer token names no one)."""
    identity = (_request().context or {}).get("identity") or {}
    arn = identity.get("userArn") if isinstance(identity, dict) else None
    if isinstance(arn, str) and arn:
        return arn
    return "local" if deps.get().settings.stage == "local" else "unidentified caller"


def _params() -> dict[str, str]:
    return dict(_request().query_params or {})


# --- projects ----------------------------------------------------------------------------


@app.route("/projects", methods=["POST"], content_types=JSON, authorizer=iam)
@_http_errors
def create_project() -> Response:

    body = _body(("name", "config"))
    try:
        project = deps.get().service.create_project(body.get("name"), body.get("config"), _caller())
    except ConfigError as exc:
        if exc.field == "name":
            raise
        raise prefixed(exc, "config") from exc
    return Response(project_view(project), status_code=201, headers={"Location": f"/projects/{project.name}"})


@app.route("/projects", methods=["GET"], authorizer=iam)
@_http_errors
def list_projects() -> dict[str, Any]:

    params = _params()
    page = deps.get().service.list_projects(parse_limit(params), params.get("next_token"))
    return page_view(page, "projects", [project_view(p) for p in page.items])


@app.route("/projects/{name}", methods=["GET"], authorizer=iam)
@_http_errors
def get_project(name: str) -> dict[str, Any]:

    return project_view(deps.get().service.get_project(name))


@app.route("/projects/{name}", methods=["PUT"], content_types=JSON, authorizer=iam)
@_http_errors
def update_project(name: str) -> dict[str, Any]:

    body = _body(("config",))
    try:
        project = deps.get().service.update_project(name, body.get("config"), _caller())
    except ConfigError as exc:
        raise prefixed(exc, "config") from exc
    return project_view(project)


def _serving(name: str) -> Any:
    """The project's deployed run (the newest, should there be two for a moment), or None."""
    service = deps.get().service
    found = [s.run for s in (service.runs.get(run_id) for run_id in service.runs.deployed_runs(name)) if s]
    return max(found, key=lambda r: r.created_at, default=None)


@app.route("/projects/{name}/status", methods=["GET"], authorizer=iam)
@_http_errors
def project_status(name: str) -> dict[str, Any]:
    """One line of the projects page: deployed run, endpoint status, open alarms, last run,
    and what the project spent this month."""
    d = deps.get()
    d.service.get_project(name)
    serving = _serving(name)
    runs = d.service.runs.page(project=name, limit=SPEND_RUNS)
    view: dict[str, Any] = {
        "project": name,
        "deployed_run_id": serving.run_id if serving else None,
        "last_run": run_summary(runs.items[0]) if runs.items else None,
    }
    if d.endpoints is not None:
        view.update(d.endpoints.status(name, serving))
    else:
        view.update({"endpoint": None, "open_alarms": [], "errors": ["SageMaker is not configured"]})
    if d.reports is not None:
        reports = d.reports
        view["spend"] = month_spend(
            [s.run for s in runs.items],
            d.settings.region,
            reports.cost,
            utcnow(),
            more=runs.next_token is not None,
            book=reports.book,
        )
    return view


@app.route("/projects/{name}/endpoint", methods=["GET"], authorizer=iam)
@_http_errors
def project_endpoint(name: str) -> dict[str, Any]:
    """The project's endpoint over the last ``hours`` (default 6): which run serves, the
    traffic split while a new model takes over, invocations, errors, latency, the
    monitoring metrics against their thresholds, and the alarms' state changes."""
    d = deps.get()
    d.service.get_project(name)
    hours = parse_hours(_params(), 6.0, MAX_WINDOW_H)
    if d.endpoints is None:
        raise ConflictError("SageMaker is not configured: there is no endpoint to show (see `tuneloop configure`)")
    deploying = d.service.runs.page(project=name, state=RunState.DEPLOYING, limit=100).items
    recent = [s.run for s in d.service.runs.page(project=name, limit=50).items]
    return d.endpoints.endpoint(name, _serving(name), deploying[0].run if deploying else None, hours, recent)


@app.route("/projects/{name}/drift-check", methods=["POST"], authorizer=iam)
@_http_errors
def check_project_drift(name: str) -> Response:
    """Run the project's drift check now, outside its schedule."""
    service = deps.get().service
    service.get_project(name)
    result = service.check_drift(force=True, project=name)
    if result.get("repeated") and not result["started"]:
        limit = service.limits.max_drift_checks_per_hour
        raise TooManyRequestsError(
            f"project {name!r} had its drift check for this slot already: at most {limit} an hour on stage "
            f"{service.limits.stage}; the next can start at {result['next_at']}"
        )
    if result.get("nothing_captured") and not result["started"] and not result["failed"]:
        raise ConflictError(f"project {name!r}'s deployed model has answered no captured request yet: nothing to check")
    if not result["started"] and not result["failed"]:
        raise ConflictError(f"project {name!r} has no deployed run to check")
    return Response(result, status_code=202)


@app.route("/projects/{name}/feedback", methods=["POST"], content_types=JSON, authorizer=iam)
@_http_errors
def post_feedback(name: str) -> Response:
    """Feedback for captured requests: ``{"labels": [{"inference_id", "label"}, ...]}``; for
    a causal-LM project each row gives ``completion``, ``rating`` or ``preferred_over``
    instead of ``label``. At most 1,000 a request. Idempotent: a retried POST (same
    Idempotency-Key, or same rows) stores nothing again and answers 200 with the first receipt."""
    current = deps.get()
    body = _body(("labels",))
    project = current.service.feedback_project(name)
    try:
        rows = check_api_rows(body.get("labels"), project.config["task"])
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise InvalidRequestError(field, message) from exc
    if current.feedback is None:
        raise ConflictError("feedback is not configured on this stage (no data bucket)")
    delivery = api_delivery(name, rows, _request().headers.get("idempotency-key"))
    try:
        receipt = current.feedback.store(name, delivery, f"api:{_caller()}", rows)
    except FeedbackRefused as exc:
        raise BadRequestError(str(exc)) from exc
    except (ClientError, BotoCoreError) as exc:
        # Nothing half-stored: the receipt is written last. A retry (same rows or key) is safe.
        logger.exception("feedback not stored", extra={"project": name})
        return _unavailable(f"the labels could not be stored ({_aws_error(exc)}); nothing was stored, retry")
    _data_arrived(name, receipt)
    return Response(receipt, status_code=200 if receipt["repeat"] else 202)


def _data_arrived(project: str, receipt: dict[str, Any]) -> None:
    """Stored labels may start a retraining run that waited for them. The labels are kept
    whatever happens here: the scheduled drift check looks again for any run that waits."""
    if not receipt.get("accepted"):
        return
    try:
        started = deps.get().service.data_arrived(project, f"labels-{receipt['delivery']}")
    except Exception:
        logger.exception("waiting retraining runs not told of the labels", extra={"project": project})
        return
    if started:
        logger.info("labels started a waiting retraining run", extra={"project": project, "started": started})


def _aws_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return f"S3 said {exc.response.get('Error', {}).get('Code', 'an error')}"
    return type(exc).__name__


def _unavailable(message: str) -> Response:
    return Response({"Code": "ServiceUnavailable", "Message": message}, status_code=503, headers={"Retry-After": "5"})


@app.route("/projects/{name}/feedback", methods=["GET"], authorizer=iam)
@_http_errors
def list_feedback(name: str) -> dict[str, Any] | Response:
    """The receipts of the project's newest feedback deliveries (both doors), newest first."""
    current = deps.get()
    current.service.get_project(name)
    if current.feedback is None:
        return {"receipts": []}
    limit = parse_limit(_params())
    try:
        return {"receipts": current.feedback.receipts(name, limit)}
    except (ClientError, BotoCoreError) as exc:
        logger.exception("feedback receipts not read", extra={"project": name})
        return _unavailable(f"the receipts could not be read ({_aws_error(exc)}); retry")


@app.route("/projects/{name}", methods=["DELETE"], authorizer=iam)
@_http_errors
def delete_project(name: str) -> dict[str, Any] | Response:
    """Stop serving and delete what the project's runs made (endpoint, scaling, configs,
    models, alarms; registered versions only with ?delete_models=true), then the project."""
    flag = _params().get("delete_models", "false")
    if flag not in ("true", "false"):
        raise BadRequestError(f"delete_models: must be true or false, not {flag[:20]!r}")
    current = deps.get()
    tear_down = current.teardown.tear_down if current.teardown else None
    try:
        return current.service.delete_project(name, tear_down, flag == "true", _caller())
    except ProjectBusyError as exc:
        raise ConflictError(str(exc)) from exc
    except (ClientError, BotoCoreError) as exc:
        logger.exception("project not deleted", extra={"project": name})
        said = f"{exc.operation_name}: {exc.response.get('Error', {}).get('Code')}" if isinstance(exc, ClientError) \
            else type(exc).__name__  # fmt: skip
        return _unavailable(f"the project's resources were not all deleted ({said}); the project is kept: "
                            "delete it again (what is gone stays gone)")  # fmt: skip


@app.route("/config/schema", methods=["GET"], authorizer=iam)
@_http_errors
def config_schema() -> dict[str, Any]:
    """The JSON Schema of a project config (every field's type, default, limits, meaning),
    made from the validator that enforces it; the dashboard's editor and docs/config.md
    come from it."""
    return project_schema()


@app.route("/spend", methods=["GET"], authorizer=iam)
@_http_errors
def stage_spend() -> dict[str, Any] | Response:
    """What the stage's projects spent this month at list prices, against its budget."""
    current = deps.get()
    if current.budget is None:
        why = "spend is read from SageMaker's job records: SageMaker is not configured here"
        return {"month": None, "usd": None, "budget_usd": current.settings.limits.monthly_budget_usd or None,
                "unavailable": why}  # fmt: skip
    try:
        return current.budget.spend()
    except (ClientError, BotoCoreError) as exc:
        logger.exception("spend not read")
        return _unavailable(f"the spend could not be read ({_aws_error(exc)}); retry")


@app.route("/notices", methods=["GET"], authorizer=iam)
@_http_errors
def list_notices() -> dict[str, Any] | Response:
    """The stage's notices, newest first: runs waiting for approval, failed or rolled back,
    retraining started by an alarm; each with the next command."""
    current = deps.get()
    if current.notices is None:
        return {"notices": []}
    limit = parse_limit(_params())
    try:
        return {"notices": current.notices.newest(limit)}
    except (ClientError, BotoCoreError) as exc:
        logger.exception("notices not read")
        return _unavailable(f"the notices could not be read ({_aws_error(exc)}); retry")


@app.route("/drops", methods=["GET"], authorizer=iam)
@_http_errors
def list_refused_drops() -> dict[str, Any] | Response:
    """Uploads under datasets/ or feedback/ that started nothing, newest first, with why."""
    current = deps.get()
    if current.refused is None:
        return {"refused": []}
    limit = parse_limit(_params())
    try:
        return {"refused": current.refused.newest(limit)}
    except (ClientError, BotoCoreError) as exc:
        logger.exception("refused uploads not read")
        return _unavailable(f"the refused uploads could not be read ({_aws_error(exc)}); retry")


# --- runs --------------------------------------------------------------------------------


@app.route("/runs", methods=["POST"], content_types=JSON, authorizer=iam)
@_http_errors
def start_run() -> Response:

    body = _body(("project", "dataset_uri"))
    service = deps.get().service
    project = check_project_name(body.get("project"), "project")
    service.get_project(project)  # 404 for an unknown project before judging its dataset
    dataset_uri = service.check_dataset_uri(body.get("dataset_uri"), project)
    # An Idempotency-Key header makes retried POSTs start one run, as an S3 redelivery does.
    key = _request().headers.get("idempotency-key")
    run_id = names.derive_id("api", project, key) if key else None
    stored, created = service.start_run(
        project, dataset_uri, run_id=run_id, reason="started through the API", actor=_caller()
    )
    return Response(
        run_summary(stored),
        status_code=202 if created else 200,
        headers={"Location": f"/runs/{stored.run.run_id}"},
    )


@app.route("/runs", methods=["GET"], authorizer=iam)
@_http_errors
def list_runs() -> dict[str, Any]:

    params = _params()
    page = deps.get().service.runs.page(
        project=parse_project_filter(params),
        state=parse_state(params),
        limit=parse_limit(params),
        next_token=params.get("next_token"),
    )
    return page_view(page, "runs", [run_summary(r) for r in page.items])


@app.route("/runs/{run_id}", methods=["GET"], authorizer=iam)
@_http_errors
def get_run(run_id: str) -> dict[str, Any]:

    stored = deps.get().service.runs.get(run_id)
    if stored is None:
        raise RunNotFoundError(run_id)
    view = run_view(stored, deps.get().settings)
    reports = deps.get().reports
    if reports is not None:
        view["tuning"] = reports.tuning(stored.run)
        view["cost"] = reports.cost(stored.run)
        try:
            evaluation = reports.evaluation_file(stored.run)
        except (ClientError, BotoCoreError, ValueError) as exc:
            evaluation = None
            view["evaluation"] = {"error": f"the run's evaluation could not be read: {exc}"}
        if evaluation is not None:
            view["evaluation"] = reports.evaluation(stored.run, evaluation)
        production = reports.production(stored.run, evaluation)
        if production is not None:
            view["production"] = production
        view["links"].update(reports.links(stored.run))
    return view


@app.route("/runs/{run_id}/stop", methods=["POST"], authorizer=iam)
@_http_errors
def stop_run(run_id: str) -> Response:
    """Stop a run's job. A deployed run stops only with ``{"stop_serving": true}``: that
    deletes the project's endpoint."""
    body = _body(("stop_serving", "reason")) if _request().raw_body else {}
    stop_serving = body.get("stop_serving", False)
    if not isinstance(stop_serving, bool):
        raise BadRequestError("stop_serving: must be true or false")
    reason = parse_reason(body, "stopped through the API")
    event = StopRequested(event_id=f"stop-{'serving-' if stop_serving else ''}{run_id}", time=utcnow(), run_id=run_id,
                          reason=reason, actor=_caller(), stop_serving=stop_serving)  # fmt: skip
    applied = deps.get().service.apply(run_id, event)
    assert applied.decision is not None
    run = applied.decision.run
    if not applied.decision.changed and applied.decision.noop != "duplicate":
        if run.state is RunState.DEPLOYED:
            raise ConflictError(
                f"run {run_id} serves {names.endpoint_name(run.project, stage=run.stage)}: stopping it deletes "
                'that endpoint; ask with {"stop_serving": true} (tuneloop run stop --stop-serving)'
            )
        raise ConflictError(f"run {run_id} cannot be stopped: {applied.decision.note}")
    return Response({"run_id": run_id, "state": run.state.value}, status_code=202)


def _decide_approval(run_id: str, approved: bool) -> Response:
    raw = _request().raw_body
    body = _body(("reason",)) if raw else {}
    reason = parse_reason(body, "")
    verdict = "approved" if approved else "rejected"
    event = ApprovalDecided(
        event_id=f"approval-{run_id}-{verdict}",
        time=utcnow(),
        run_id=run_id,
        approved=approved,
        reason=reason,
        actor=_caller(),
    )
    applied = deps.get().service.apply(run_id, event)
    decision = applied.decision
    assert decision is not None
    # A retried decision is harmless while the run still waits on it; once the run has moved
    # on (deployed, rejected), approving it again is a conflict, not an echo.
    repeat = decision.noop == "duplicate" and decision.run.state is RunState.PENDING_APPROVAL
    if not decision.changed and not repeat:
        raise ConflictError(f"run {run_id} is {decision.run.state.value}, not waiting for approval: {decision.note}")
    return Response({"run_id": run_id, "decision": verdict, "state": decision.run.state.value}, status_code=202)


@app.route("/runs/{run_id}/retrain", methods=["POST"], content_types=JSON, authorizer=iam)
@_http_errors
def retrain_run(run_id: str) -> Response:
    """Start a retraining run of a deployed run by hand (same guards as a drift alarm's,
    but for the alarm's own checks). An Idempotency-Key header makes a retried POST one request."""
    body = _body(("reason",)) if _request().raw_body else {}
    reason = parse_reason(body, "retraining requested through the API", allow_empty=False)
    key = _request().headers.get("idempotency-key") or utcnow().isoformat()
    event = RetrainRequested(event_id=f"retrain-{names.derive_id(run_id, key)}", time=utcnow(), run_id=run_id,
                             reason=reason, actor=_caller())  # fmt: skip
    applied = deps.get().service.apply(run_id, event)
    assert applied.decision is not None
    if not applied.decision.changed and applied.decision.noop != "duplicate":
        raise ConflictError(f"run {run_id} cannot be retrained now: {applied.decision.note}")
    started = [c for c in applied.decision.commands if isinstance(c, StartChildRun)]
    child = started[0].child_run_id if started else None
    if child is None:  # a repeat: the child the first request started
        child = names.derive_id("child", run_id, event.event_id)
    return Response({"run_id": run_id, "child_run_id": child}, status_code=202, headers={"Location": f"/runs/{child}"})


@app.route("/runs/{run_id}/approve", methods=["POST"], content_types=JSON, authorizer=iam)
@_http_errors
def approve_run(run_id: str) -> Response:
    return _decide_approval(run_id, approved=True)


@app.route("/runs/{run_id}/reject", methods=["POST"], content_types=JSON, authorizer=iam)
@_http_errors
def reject_run(run_id: str) -> Response:
    return _decide_approval(run_id, approved=False)


# --- events ------------------------------------------------------------------------------


@_any_shape
@app.on_cw_event(DATASET_PATTERN, name="on_dataset_uploaded")
def on_dataset_uploaded(event: AnyEvent) -> dict[str, Any]:
    """A dataset drop starts a run; a labels file under feedback/ is stored for monitoring."""
    config = deps.get().settings
    raw = event.to_dict()
    if _is_feedback(raw):
        return _feedback_uploaded(raw)
    try:
        drop = parse_object_created(raw, config.dataset_prefix)
        if drop.bucket != config.bucket:
            raise IntakeIgnored(f"bucket {drop.bucket} is not tuneloop's bucket {config.bucket}")
    except (MalformedEventError, IntakeIgnored) as exc:
        logger.info("upload starts no run", extra={"event_id": event_id(raw), "reason": str(exc)})
        return {"ignored": str(exc)}
    applied = deps.get().service.intake(drop)
    if applied.run_id is None and applied.ignored:
        _record_refusal(drop.key, drop.idempotency_key, applied.ignored)
    return {"run_id": applied.run_id, "ignored": applied.ignored}


def _record_refusal(key: str, identity: str, reason: str) -> None:
    """An upload that starts nothing is listed by GET /drops: its uploader sees why."""
    refused = deps.get().refused
    if refused is None:
        return
    try:
        refused.record(key, identity, reason)
    except (ClientError, BotoCoreError):
        logger.exception("refused upload not recorded", extra={"key": key, "reason": reason})


def _is_feedback(raw: Any) -> bool:
    detail = raw.get("detail") if isinstance(raw, dict) else None
    obj = detail.get("object") if isinstance(detail, dict) else None
    key = obj.get("key") if isinstance(obj, dict) else None
    return isinstance(key, str) and key.startswith(FEEDBACK_PREFIX)


def _feedback_uploaded(raw: dict[str, Any]) -> dict[str, Any]:
    current = deps.get()
    try:
        drop = parse_feedback_created(raw, FEEDBACK_PREFIX)
        if drop.bucket != current.settings.bucket:
            raise IntakeIgnored(f"bucket {drop.bucket} is not tuneloop's bucket {current.settings.bucket}")
        if current.feedback is None:
            raise IntakeIgnored("feedback is not configured on this stage")
        task = current.service.feedback_project(drop.project).config["task"]
    except (MalformedEventError, IntakeIgnored, ProjectNotFoundError, InvalidRequestError) as exc:
        reason = f"no project named {exc.args[0]!r}" if isinstance(exc, ProjectNotFoundError) else str(exc)
        logger.warning("feedback upload ignored", extra={"event_id": event_id(raw), "reason": reason})
        if isinstance(exc, (ProjectNotFoundError, InvalidRequestError)):
            _record_refusal(drop.key, drop.identity, reason)
        return {"ignored": reason}
    receipt = current.feedback.intake(drop, task)
    logger.info(
        "feedback stored",
        extra={"project": drop.project, "key": drop.key, "accepted": receipt["accepted"], "refused": receipt["refused"],
               "errors": receipt["errors"][:5], "repeat": receipt["repeat"]},
    )  # fmt: skip
    _data_arrived(drop.project, receipt)
    return {"feedback": {k: receipt[k] for k in ("delivery", "accepted", "refused", "repeat")}}


def _domain_event(event: AnyEvent) -> dict[str, Any]:

    raw = event.to_dict()
    try:
        parsed = parse_event(raw)
    except (MalformedEventError, UnknownEventError) as exc:
        logger.warning("event ignored", extra={"event_id": event_id(raw), "reason": str(exc)})
        return {"ignored": str(exc)}
    applied = deps.get().service.handle(parsed)
    decision = applied.decision
    return {
        "run_id": applied.run_id,
        "ignored": applied.ignored,
        "state": decision.run.state.value if decision else None,
        "noop": decision.noop if decision else None,
    }


@_any_shape
@app.on_cw_event(SAGEMAKER_PATTERN, name="on_sagemaker_event")
def on_sagemaker_event(event: AnyEvent) -> dict[str, Any]:
    return _domain_event(event)


@_any_shape
@app.on_cw_event(ALARM_PATTERN, name="on_alarm")
def on_alarm(event: AnyEvent) -> dict[str, Any]:
    return _domain_event(event)


@app.schedule(Rate(5, unit=Rate.MINUTES), name="reconcile")
def reconcile(event: Any) -> dict[str, int]:
    return deps.get().service.reconcile()


@app.schedule(Rate(5, unit=Rate.MINUTES), name="check_drift")
def check_drift(event: Any) -> dict[str, int]:
    """Start each deployed run's drift check once per its project's schedule window."""
    return deps.get().service.check_drift()
