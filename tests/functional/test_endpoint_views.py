"""GET /projects/{name}/endpoint and /status: the endpoint's traffic, latency, monitoring
metrics and alarms from the local cloud's CloudWatch (moto behind the gateway, with the
percentiles and alarm history tuneloop adds), and SageMaker's DescribeEndpoint through
botocore's Stubber (each request and answer checked against the service model)."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib import deps as deps_module
from chalicelib.deployment import VARIANT, drift_dimensions, endpoint_config_name, monitoring_alarm_requests
from chalicelib.domain import names
from chalicelib.domain.machine import Decision
from chalicelib.domain.project import normalise_config
from chalicelib.domain.run import HistoryEntry, Run
from chalicelib.domain.states import RunState
from chalicelib.endpoints import EndpointViews, period_for
from tests.conftest import DEMO_CONFIG, STAGE

pytestmark = pytest.mark.integration


def endpoint_of(project: str) -> str:
    return names.endpoint_name(project, stage=STAGE)


def now() -> datetime:
    """Real time: moto stamps alarm changes with it, and the views' window ends at it."""
    return datetime.now(UTC).replace(microsecond=0)


def commit(deps: Any, project: str, state: RunState, seed: str) -> Run:
    config = normalise_config({**DEMO_CONFIG, "quality": {"thresholds": {"production_macro_f1": 0.8}}})
    run_id = names.derive_id(project, seed)
    since = now() - timedelta(hours=2)
    entry = HistoryEntry(f"e-{seed}", "endpoint.in_service", RunState.DEPLOYING, state, "test", since)
    run = Run(run_id, project, state, config, f"s3://b/datasets/{project}/d.jsonl", now() - timedelta(hours=3),
              history=(entry,), stage=STAGE)  # fmt: skip
    deps.service.runs.commit(None, Decision(run=run, commands=(), note="test"), now())
    return run


def predecessor(deps: Any, project: str) -> Run:
    """The model that served before: deployed four hours ago, superseded two hours ago."""
    config = normalise_config({**DEMO_CONFIG, "quality": {"thresholds": {"production_macro_f1": 0.8}}})
    run_id = names.derive_id(project, "old")
    history = (
        HistoryEntry("e-old-1", "endpoint.in_service", RunState.DEPLOYING, RunState.DEPLOYED, "test",
                     now() - timedelta(hours=4)),
        HistoryEntry("e-old-2", "run.superseded", RunState.DEPLOYED, RunState.SUPERSEDED, "test",
                     now() - timedelta(hours=2)),
    )  # fmt: skip
    run = Run(run_id, project, RunState.SUPERSEDED, config, f"s3://b/datasets/{project}/d.jsonl",
              now() - timedelta(hours=5), history=history, stage=STAGE)  # fmt: skip
    deps.service.runs.commit(None, Decision(run=run, commands=(), note="test"), now())
    return run


def described(project: str, serving: Run, new: Run) -> dict[str, Any]:
    """DescribeEndpoint while a canary update has 10% of traffic on the new fleet."""
    return {
        "EndpointName": names.endpoint_name(project, stage=STAGE),
        "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/" + names.endpoint_name(project, stage=STAGE),
        "EndpointConfigName": endpoint_config_name(serving),
        "ProductionVariants": [{"VariantName": VARIANT, "CurrentWeight": 0.9, "DesiredWeight": 0.9,
                                "CurrentInstanceCount": 1, "DesiredInstanceCount": 1}],
        "EndpointStatus": "Updating",
        "CreationTime": now() - timedelta(hours=3),
        "LastModifiedTime": now(),
        "PendingDeploymentSummary": {
            "EndpointConfigName": endpoint_config_name(new),
            "StartTime": now() - timedelta(minutes=2),
            "ProductionVariants": [{
                "VariantName": VARIANT, "CurrentWeight": 0.1, "DesiredWeight": 1.0, "CurrentInstanceCount": 1,
                "VariantStatus": [{"Status": "ActivatingTraffic", "StatusMessage": "10% of traffic on the new fleet",
                                   "StartTime": now() - timedelta(minutes=1)}],
            }],
        },
    }  # fmt: skip


@pytest.fixture
def watched(deps: Any, api: Any, local_services: Any, s3: Any) -> Any:  # s3: the stage's bucket exists
    project = f"ep{uuid.uuid4().hex[:8]}"
    status, body = api.call("POST", "/projects", {"name": project, "config": DEMO_CONFIG})
    assert status == 201, body
    serving = commit(deps, project, RunState.DEPLOYED, "serving")
    new = commit(deps, project, RunState.DEPLOYING, "new")
    old = predecessor(deps, project)
    cloudwatch = boto3.client("cloudwatch")
    endpoint = names.endpoint_name(project, stage=STAGE)
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]
    minute = now().replace(second=0) - timedelta(minutes=10)
    cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[
        {"MetricName": "Invocations", "Dimensions": dimensions, "Value": 40, "Timestamp": minute},
        {"MetricName": "Invocation4XXErrors", "Dimensions": dimensions, "Value": 2, "Timestamp": minute},
        {"MetricName": "Invocation5XXErrors", "Dimensions": dimensions, "Value": 1, "Timestamp": minute},
        {"MetricName": "ModelLatency", "Dimensions": dimensions, "Values": [1000.0 * v for v in range(1, 101)],
         "Unit": "Microseconds", "Timestamp": minute},
    ])  # fmt: skip
    alarms = monitoring_alarm_requests(serving)
    for alarm in alarms:
        cloudwatch.put_metric_alarm(**alarm)
    psi = next(a for a in alarms if a["MetricName"] == "prediction_psi")
    cloudwatch.put_metric_data(Namespace="tuneloop", MetricData=[
        {"MetricName": "prediction_psi", "Dimensions": drift_dimensions(project, serving.run_id, stage=STAGE),
         "Value": v,
         # Three minutes apart: two points at the six-hour view's 120 s period, whatever its buckets' offset.
         "Timestamp": minute + timedelta(minutes=3 * n)} for n, v in enumerate((0.05, 0.41))
    ])  # fmt: skip
    # The model it replaced two hours ago drifted far more: its own series, not the serving one's.
    cloudwatch.put_metric_data(Namespace="tuneloop", MetricData=[
        {"MetricName": "prediction_psi", "Dimensions": drift_dimensions(project, old.run_id, stage=STAGE),
         "Value": 2.98,
         "Timestamp": now() - timedelta(hours=3)}])  # fmt: skip
    cloudwatch.set_alarm_state(AlarmName=psi["AlarmName"], StateValue="ALARM", StateReason="0.41 > 0.2")
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    stubber = Stubber(sagemaker)
    stubber.activate()
    views = EndpointViews(sagemaker, cloudwatch, lambda: datetime.now(UTC), STAGE)
    deps_module.override(dataclasses.replace(deps, endpoints=views))
    try:
        yield {"project": project, "serving": serving, "new": new, "old": old, "stubber": stubber, "psi": psi,
               "answer": described(project, serving, new)}  # fmt: skip
    finally:
        deps_module.override(deps)


def test_the_endpoint_view_shows_traffic_latency_drift_and_alarm_changes(api: Any, watched: Any) -> None:
    project, serving, new = watched["project"], watched["serving"], watched["new"]
    watched["stubber"].add_response(
        "describe_endpoint", watched["answer"], {"EndpointName": names.endpoint_name(project, stage=STAGE)}
    )
    status, view = api.call("GET", f"/projects/{project}/endpoint?hours=1")
    assert status == 200, view
    assert view["errors"] == [] and view["status"] == "Updating"
    assert view["serving_run_id"] == serving.run_id and view["deploying_run_id"] == new.run_id
    split = {f["role"]: f for f in view["traffic_split"]}
    assert split["serving"]["run_id"] == serving.run_id and split["serving"]["share"] == pytest.approx(0.9)
    assert split["new"]["run_id"] == new.run_id and split["new"]["share"] == pytest.approx(0.1)
    assert split["new"]["phase"] == "ActivatingTraffic"
    assert view["window"]["period_s"] == period_for(1) == 60

    traffic = view["traffic"]
    assert [v for _, v in traffic["invocations"]] == [40.0]
    assert [v for _, v in traffic["errors_4xx"]] == [2.0] and [v for _, v in traffic["errors_5xx"]] == [1.0]
    assert [v for _, v in traffic["latency_p50_ms"]] == [50.0]  # nearest rank of 1..100 ms
    assert [v for _, v in traffic["latency_p99_ms"]] == [99.0]

    # The model that left before the window is not drawn; the serving one and the one being
    # deployed are, each on its own series (the new one has none of its own yet).
    assert [m["run_id"] for m in view["models"]] == [serving.run_id, new.run_id]
    assert {m["run_id"] for m in view["monitoring"]} == {serving.run_id, new.run_id}
    assert all(m["points"] == [] for m in view["monitoring"] if m["run_id"] == new.run_id)
    monitored = {m["metric"]: m for m in view["monitoring"] if m["run_id"] == serving.run_id}
    assert set(monitored) == {a["MetricName"] for a in monitoring_alarm_requests(serving)}
    psi = monitored["prediction_psi"]
    assert [v for _, v in psi["points"]] == [0.05, 0.41]
    assert psi["threshold"] == watched["psi"]["Threshold"] and psi["breaches"] == "above" and psi["kind"] == "drift"
    quality = monitored["production_macro_f1"]
    assert quality["breaches"] == "below" and quality["kind"] == "quality" and quality["points"] == []

    alarms = {a["name"]: a for a in view["alarms"]}
    assert alarms[watched["psi"]["AlarmName"]]["state"] == "ALARM"
    [change] = view["alarm_changes"]
    assert change["alarm"] == watched["psi"]["AlarmName"] and (change["from"], change["to"]) == ("OK", "ALARM")
    assert change["reason"] == "0.41 > 0.2"
    watched["stubber"].assert_no_pending_responses()

    # Over six hours: the model it replaced too, its series apart, and the switch marked.
    watched["stubber"].add_response(
        "describe_endpoint", watched["answer"], {"EndpointName": names.endpoint_name(project, stage=STAGE)}
    )
    status, view = api.call("GET", f"/projects/{project}/endpoint?hours=6")
    old = watched["old"]
    assert status == 200 and [m["run_id"] for m in view["models"]][:2] == [old.run_id, serving.run_id], view["models"]
    assert view["switches"][0] == {"time": view["models"][1]["since"], "run_id": serving.run_id,
                                   "replaced": old.run_id, "deploying": False}  # fmt: skip
    assert view["switches"][-1]["run_id"] == new.run_id and view["switches"][-1]["deploying"]
    series = {m["run_id"]: m for m in view["monitoring"] if m["metric"] == "prediction_psi"}
    assert [v for _, v in series[old.run_id]["points"]] == [2.98]
    assert [v for _, v in series[serving.run_id]["points"]] == [0.05, 0.41]


def test_the_status_line_has_the_endpoint_and_its_open_alarms(api: Any, watched: Any) -> None:
    project = watched["project"]
    watched["stubber"].add_response(
        "describe_endpoint", watched["answer"], {"EndpointName": names.endpoint_name(project, stage=STAGE)}
    )
    status, view = api.call("GET", f"/projects/{project}/status")
    assert status == 200, view
    assert view["deployed_run_id"] == watched["serving"].run_id
    assert view["last_run"]["run_id"] in (watched["serving"].run_id, watched["new"].run_id)
    assert view["endpoint"] == {"name": names.endpoint_name(project, stage=STAGE), "status": "Updating"}
    assert [a["name"] for a in view["open_alarms"]] == [watched["psi"]["AlarmName"]]
    assert view["errors"] == []


def test_a_missing_endpoint_and_a_failing_service_still_give_a_view(api: Any, watched: Any) -> None:
    project = watched["project"]
    stubber = watched["stubber"]
    stubber.add_client_error("describe_endpoint", "ValidationException", f"Could not find endpoint tl-{project}.")
    status, view = api.call("GET", f"/projects/{project}/status")
    assert status == 200 and view["endpoint"] is None and view["errors"] == []
    stubber.add_client_error("describe_endpoint", "ThrottlingException", "Rate exceeded", 400)
    status, view = api.call("GET", f"/projects/{project}/endpoint")
    assert status == 200 and view["status"] is None
    assert [e.split(":")[0] for e in view["errors"]] == ["DescribeEndpoint"]
    assert [v for _, v in view["traffic"]["invocations"]] == [40.0]  # the rest still comes back


@pytest.mark.parametrize("hours", ["0", "-1", "abc", "nan", "inf", "337"])
def test_a_bad_window_is_a_400_naming_hours(api: Any, watched: Any, hours: str) -> None:
    status, body = api.call("GET", f"/projects/{watched['project']}/endpoint?hours={hours}")
    assert status == 400 and body["Message"].startswith("hours:"), body


def test_unknown_projects_and_an_unconfigured_stage(api: Any, demo: Any) -> None:
    assert api.call("GET", "/projects/nope/endpoint")[0] == 404
    assert api.call("GET", "/projects/nope/status")[0] == 404
    status, body = api.call("GET", "/projects/demo/endpoint")
    assert status == 409 and "not configured" in body["Message"]
    status, body = api.call("GET", "/projects/demo/status")
    assert status == 200 and body["endpoint"] is None and body["deployed_run_id"] is None
    assert body["last_run"] is None and "spend" not in body


class Described:
    """SageMaker for the browser test: the page polls, so one canned answer serves every
    call (its shape is checked by the Stubber tests above)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    def describe_endpoint(self, **_: Any) -> dict[str, Any]:
        return self.answer


@contextmanager
def dashboard_over_the_app() -> Iterator[Any]:
    """The app behind the local API server, the dashboard's server in front of it, and a
    headless Chromium on it (signed in); yields (page, origin, errors, browser, a maker of sign-in links)."""
    import app as app_module
    from tests.e2e.dashboard import BROWSER_ARGS, CHROMIUM, browser_ready
    from tuneloop.local.apiserver import ApiServer
    from tuneloop.ui.server import LocalBackend, UiServer

    if not browser_ready():
        pytest.skip("needs chromium and node_modules/axe-core")
    from playwright.sync_api import sync_playwright

    api = ApiServer(app_module.app, "token-for-the-test")
    threading.Thread(target=api.serve_forever, daemon=True).start()
    ui = UiServer(LocalBackend(lambda: SimpleNamespace(api_url=f"http://127.0.0.1:{api.port}", token=api.token)))
    ui.serve_in_background()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("response", lambda r: errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
                page.goto(ui.link())
                yield page, f"http://127.0.0.1:{ui.port}", errors, browser, ui.link
            finally:
                browser.close()
    finally:
        ui.shutdown()
        api.shutdown()


def test_the_endpoint_page_during_a_canary_in_a_browser(deps: Any, watched: Any, tmp_path: Path) -> None:
    """The endpoint page while a blue/green update shifts traffic and a drift alarm fired:
    the split, the charts with the threshold and the alarm's change marked, no console
    error or failed request, no serious axe violation; a screenshot for the record."""
    from tests.e2e.dashboard import AXE, SERIOUS

    project = watched["project"]
    views = EndpointViews(Described(watched["answer"]), boto3.client("cloudwatch"), lambda: datetime.now(UTC), STAGE)
    deps_module.override(dataclasses.replace(deps, endpoints=views))
    artifacts = Path(os.environ.get("TUNELOOP_ARTIFACTS") or tmp_path) / "dashboard"
    artifacts.mkdir(parents=True, exist_ok=True)
    with dashboard_over_the_app() as (page, origin, errors, browser, signin):
        page.goto(f"{origin}/projects/{project}/endpoint?hours=1")
        page.wait_for_selector("#endpoint-status")
        text = page.locator("main").inner_text()
        assert "A blue/green update is shifting traffic" in text
        split = page.locator("table:has(caption:text-is('Traffic split')) tbody tr")
        assert [split.nth(n).locator("td").all_inner_texts()[:3] for n in range(split.count())] == [
            ["serving", watched["serving"].run_id, "90%"],
            ["new model", watched["new"].run_id, "10%"],
        ]
        psi = page.locator("figure", has=page.get_by_role("img", name=re.compile("prediction_psi")))
        assert psi.locator("line.threshold").count() == 1 and psi.locator("line.marker").count() == 1
        assert psi.locator("ul.markers li").all_inner_texts()[0].endswith("OK → ALARM: 0.41 > 0.2")
        assert psi.locator("svg circle").count() == 2
        assert page.locator(".alarm.ALARM").count() >= 1
        page.screenshot(path=str(artifacts / "endpoint-canary.png"), full_page=True)
        page.goto(f"{origin}/")
        page.wait_for_selector("main table")
        assert page.locator("main tbody tr td").nth(5).inner_text() == "prediction_psi"
        assert errors == [], errors
        audit = browser.new_context(bypass_csp=True).new_page()
        audit.goto(signin())  # a link opens the dashboard once: a new one
        for path in ("/", f"/projects/{project}/endpoint"):
            audit.goto(f"{origin}{path}")
            audit.wait_for_selector("main table")
            audit.add_script_tag(path=str(AXE))
            assert audit.evaluate(SERIOUS) == [], path


def test_approving_a_run_in_the_browser_round_trips(deps: Any, api: Any) -> None:
    """A run waiting for manual approval: Approve, confirmed with a reason, reaches the API;
    its answer is shown and the run's history records who approved and why."""
    status, body = api.call("POST", "/projects", {"name": "approved", "config": DEMO_CONFIG})
    assert status == 201, body
    waiting = commit(deps, "approved", RunState.PENDING_APPROVAL, "waiting")
    with dashboard_over_the_app() as (page, origin, errors, _browser, _signin):
        page.goto(f"{origin}/runs/{waiting.run_id}")
        page.get_by_role("button", name="Approve").click()
        page.locator("#confirm-reason").fill("looked at the report")
        page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
        page.wait_for_selector("pre.answer:has-text('Approve:')")
        assert '"decision":"approved"' in page.locator("pre.answer").inner_text()
        decided = api.call("GET", f"/runs/{waiting.run_id}")[1]["history"][-1]
        assert decided["event_kind"] == "approval.decided" and "looked at the report" in decided["reason"]
        assert errors == [], errors


def test_the_private_file_tuneloop_ui_opens_signs_the_browser_in(
    deps: Any, api: Any, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tuneloop ui` hands the browser a file (no command line shows the link) that
    redirects to it: from a file:// page the browser treats the dashboard as another site,
    yet the sign-in page opens the dashboard from its own origin, so the session's cookie
    and token both arrive, and the projects page shows the API's data."""
    import shutil
    import webbrowser

    from tuneloop.ui.server import open_privately

    assert api.call("POST", "/projects", {"name": "opened", "config": DEMO_CONFIG})[0] == 201
    with dashboard_over_the_app() as (_page, origin, _errors, browser, signin):
        handed: list[str] = []
        monkeypatch.setattr(webbrowser, "open", handed.append)
        folder = open_privately(signin())
        try:
            page = browser.new_context().new_page()  # a browser with no session yet
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
            page.goto(handed[0])
            page.wait_for_url(f"{origin}/")
            page.wait_for_selector("main a[href='/projects/opened']")
            assert page.locator("#backend").inner_text().startswith("API: ") and errors == [], errors
        finally:
            shutil.rmtree(folder)
