"""The dashboard in a real browser, against the local cloud after a real run (called by the
end-to-end test): every page loads with no console error and no failed request, what it
shows equals the API's answer, actions round-trip, axe-core finds no serious violation, and
each page's screenshot is saved."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REPO, http, wait_for
from tuneloop import configdoc

CHROMIUM = Path("/usr/bin/chromium")
AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
SERIOUS = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.filter((v) => ["serious", "critical"].includes(v.impact))
    .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
}"""


def browser_ready() -> bool:
    """Whether the system's Chromium and axe-core are there; where CI requires them
    (TUNELOOP_REQUIRE_BROWSER), their absence is a failure, not a skip."""
    if CHROMIUM.exists() and AXE.exists():
        return True
    if os.environ.get("TUNELOOP_REQUIRE_BROWSER"):
        raise AssertionError(f"{CHROMIUM} or {AXE} is missing; .ci/run and make setup install them")
    return False


def shown(value: float) -> str:
    """A number as the dashboard's fmt() writes it (3 decimals, trailing zeros dropped)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


@contextmanager
def dashboard(home: Path) -> Iterator[str]:
    """`tuneloop ui --no-open` for this home; yields the link it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL") and k != "TUNELOOP_BUCKET"}
    env["TUNELOOP_HOME"] = str(home)
    process = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "ui", "--no-open"], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/\?session=\S+)", first)
        assert match, first
        yield match[1]
    finally:
        process.terminate()
        process.wait(timeout=30)


def check_dashboard(home: Path, state: dict[str, Any], run: dict[str, Any], artifacts: Path) -> None:
    if not browser_ready():
        pytest.skip("the dashboard's browser check needs chromium and node_modules/axe-core")
    from playwright.sync_api import sync_playwright

    artifacts.mkdir(parents=True, exist_ok=True)
    run_id = run["run_id"]
    with dashboard(home) as url, sync_playwright() as playwright:
        origin = url.split("/?")[0]
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            # ERR_ABORTED: the browser cancelled a poll when the test navigated away; any other
            # failure (refused, reset, timed out) is the dashboard's.
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url} {r.failure}")
                    if "ERR_ABORTED" not in (r.failure or "") else None)  # fmt: skip
            page.on("response", lambda r: errors.append(f"{r.status}: {r.url}") if r.status >= 400 else None)

            try:
                # The link trades its secret for the session cookie; without it, nothing opens.
                page.goto(url)
                page.wait_for_selector("table")
                assert page.url == f"{origin}/", page.url
                assert page.locator("main").get_by_role("link", name=run_id).count() >= 1
                status = http(state, "GET", "/projects/demo/status")[1]
                config_base = http(state, "GET", "/projects/demo")[1]["config"]["base_model"]
                cells = page.locator("main table tbody tr").first.locator("td").all_inner_texts()
                assert cells[2] == status["deployed_run_id"] == run_id and cells[3] == status["endpoint"]["status"]
                assert cells[5] == (", ".join(a["metric"] for a in status["open_alarms"]) or "none")
                assert cells[6].startswith(f"${status['spend']['usd']:.2f}"), (cells, status["spend"])
                # Uploads that started nothing are listed where the uploader looks, with why.
                for record in http(state, "GET", "/drops")[1]["refused"]:
                    refused = page.locator("table:has(caption:text-is('Uploads that started nothing'))")
                    assert record["uri"] in refused.inner_text() and record["reason"] in refused.inner_text()
                page.screenshot(path=str(artifacts / "projects.png"), full_page=True)

                # A new project: the server's refusals shown at the field at fault, then created.
                page.get_by_text("New project").click()
                page.locator("#new-name").fill("demo")
                page.get_by_role("button", name="Create project").click()
                page.wait_for_selector("#new-error:has-text('already exists')")
                assert page.locator("#new-name").get_attribute("aria-invalid") == "true"
                page.locator("#new-name").fill("dashboard")
                page.locator("#new-config").fill(json.dumps({"base_model": config_base, "task": "x"}))
                page.get_by_role("button", name="Create project").click()
                page.wait_for_selector("#new-error:has-text('config.task')")
                assert page.locator("#new-config").get_attribute("aria-invalid") == "true"
                assert page.locator("#new-name").get_attribute("aria-invalid") is None
                page.locator("#new-config").fill(json.dumps({"base_model": config_base, "task": "text-classification"}))
                page.get_by_role("button", name="Create project").click()
                page.wait_for_url(f"{origin}/projects/dashboard")
                page.wait_for_selector("#config")
                # Beside the editor, every field of the config from the schema the API serves: the
                # same fields docs/config.md lists.
                page.get_by_text("Every field, its default and meaning").click()
                fields = page.locator("table:has(caption:text-is('Project config fields')) tbody tr td:first-child")
                assert sorted(fields.all_inner_texts()) == sorted(configdoc.field_paths())
                assert http(state, "GET", "/projects/dashboard")[1]["config"]["task"] == "text-classification"
                refused = ("409: ", "400: ", "status of 409", "status of 400")
                errors[:] = [e for e in errors if not any(e.startswith(r) or r in e for r in refused)]  # those two

                page.goto(f"{origin}/runs?project=demo")
                page.wait_for_selector(f"a[href='/runs/{run_id}']")
                listed = http(state, "GET", "/runs?project=demo")[1]["runs"]
                rows = page.locator("#runs tbody tr")
                assert rows.count() == len(listed)
                for n, api_run in enumerate(listed):
                    cells = rows.nth(n).locator("td").all_inner_texts()
                    assert cells[0] == api_run["run_id"] and cells[2].lower() == api_run["state"].replace("_", " ")
                page.screenshot(path=str(artifacts / "runs.png"), full_page=True)

                page.goto(f"{origin}/runs/{run_id}")
                page.wait_for_selector("#tuning")
                current = http(state, "GET", f"/runs/{run_id}")[1]
                text = page.locator("main").inner_text()
                assert f"State {current['state'].replace('_', ' ').upper()}" in text.replace("\n", " ")
                evaluation = current["metrics"]["evaluation"]
                rows = page.locator("table:has(caption:text-is('evaluation metrics')) tbody tr").all()
                metric_rows = {r.locator("td").nth(0).inner_text(): r.locator("td").nth(1).inner_text() for r in rows}
                assert metric_rows["macro_f1"] == shown(evaluation["macro_f1"]), metric_rows
                # The tuning chart: one point per trial, and a text alternative that lists them.
                chart = page.get_by_role("img", name=re.compile("Tuning trials"))
                assert chart.count() == 1
                assert page.locator("figure svg circle").count() >= 2 * len(current["tuning"]["trials"]) - 1
                assert len(current["history"]) == page.locator("ol.timeline li").count()
                # Training curves, per-class scores, the confusion matrix and calibration, as the API has them.
                assert page.get_by_role("img", name=re.compile("Loss per training step")).count() == 1
                assert page.get_by_role("img", name=re.compile("Validation metrics per epoch")).count() == 1
                assert page.get_by_role("img", name=re.compile("Reliability")).count() == 1
                detail = current["evaluation"]
                per_class = page.locator("table:has(caption:text-is('Per-class metrics on the test split')) tbody tr")
                assert per_class.count() == len(detail["per_class"])
                for n, (label, m) in enumerate(detail["per_class"].items()):
                    assert per_class.nth(n).locator("td").all_inner_texts() == [
                        label,
                        shown(m["precision"]),
                        shown(m["recall"]),
                        shown(m["f1"]),
                        str(m["support"]),
                    ]
                matrix = page.locator("table.matrix tbody tr")
                assert [[int(c) for c in matrix.nth(r).locator("td").all_inner_texts()]
                        for r in range(matrix.count())] == detail["confusion_matrix"]  # fmt: skip
                page.screenshot(path=str(artifacts / "run.png"), full_page=True)

                # The endpoint: status, serving run, traffic and monitoring charts, as the API has them.
                def served() -> Any:
                    answer = http(state, "GET", "/projects/demo/endpoint")[1]
                    return answer["traffic"]["invocations"] and answer

                view = wait_for(served, 30)
                page.goto(f"{origin}/projects/demo/endpoint")
                page.wait_for_selector("#endpoint-status")
                assert page.locator("#endpoint-status").inner_text() == view["status"] == "InService"
                assert page.locator("main").get_by_role("link", name=run_id).count() >= 1
                assert page.get_by_role("img", name=re.compile("Model latency")).count() == 1
                invocations = page.get_by_role("img", name=re.compile("Invocations and errors"))
                assert invocations.count() == 1
                figure = page.locator("figure", has=invocations)
                figure.locator("summary").click()
                values = [
                    row.locator("td").all_inner_texts() for row in figure.locator("details table tr:has(td)").all()
                ]
                counted = sum(float(cells[2]) for cells in values if cells[0] == "invocations")
                assert counted == sum(v for _, v in view["traffic"]["invocations"]) >= 1, values
                charts = {(m["kind"], m["metric"]) for m in view["monitoring"]}  # a chart a metric, a series a model
                assert page.locator("section[aria-labelledby=monitoring] figure").count() == len(charts)
                page.get_by_role("button", name="Check drift now").click()
                page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
                page.wait_for_selector("pre.answer:has-text('Drift check')")
                said = page.locator("pre.answer").inner_text()
                assert '"started":1' in said or "refused: 429" in said, said
                errors[:] = [e for e in errors if not (e.startswith("429: ") or "status of 429" in e)]  # a repeat
                page.screenshot(path=str(artifacts / "endpoint.png"), full_page=True)

                page.goto(f"{origin}/projects/demo")
                page.wait_for_selector("#config")
                # A config the server refuses: its message, naming the field, shown at the editor.
                config = page.locator("#config").input_value().replace('"instance_count": 1', '"instance_count": 0', 1)
                page.locator("#config").fill(config)
                page.get_by_role("button", name="Save config").click()
                page.wait_for_selector("#config-error:has-text('instance_count')")
                assert page.locator("#config").get_attribute("aria-invalid") == "true"
                errors[:] = [e for e in errors if not (e.startswith("400: ") or "status of 400" in e)]  # that refusal
                page.screenshot(path=str(artifacts / "project.png"), full_page=True)

                # Actions round-trip: retrain the deployed run, then stop the child it started.
                page.goto(f"{origin}/runs/{run_id}")
                page.get_by_role("button", name="Retrain").click()
                page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
                page.wait_for_selector("pre.answer:has-text('child_run_id')")
                child = re.search(r'"child_run_id":"(\w+)"', page.locator("pre.answer").inner_text())
                assert child, page.locator("pre.answer").inner_text()
                # The child exists once its parent's outbox ran StartChildRun (at once, or by
                # the reconciler after a transient failure).
                wait_for(lambda: http(state, "GET", f"/runs/{child[1]}")[0] == 200, 60)
                page.goto(f"{origin}/runs/{child[1]}")
                page.get_by_role("button", name="Stop", exact=True).wait_for()
                wait_for(lambda: page.get_by_role("button", name="Stop", exact=True).is_enabled(), 30)
                page.get_by_role("button", name="Stop", exact=True).click()
                page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
                page.wait_for_selector("pre.answer:has-text('Stop:')")
                stopped = wait_for(
                    lambda: (r := http(state, "GET", f"/runs/{child[1]}")[1])["state"] == "stopped" and r, 60
                )
                page.wait_for_selector(".state.stopped")
                assert stopped["history"][-1]["actor"] == "local"
                assert errors == [], errors
            except Exception as exc:  # say what the page showed, for a failure seen once in CI
                page.screenshot(path=str(artifacts / "failure.png"), full_page=True)
                shown_text = page.locator("main").inner_text()[:2000] if page.locator("main").count() else ""
                raise AssertionError(
                    f"{exc}\nat {page.url}\nrequests and console: {errors}\npage: {shown_text}"
                ) from exc
            # axe-core in each page (its script is injected, so this context lets it past the CSP).
            # The link opened the dashboard once: this context takes the session it started.
            audit = browser.new_context(bypass_csp=True, storage_state=context.storage_state()).new_page()
            assert audit.goto(url).status == 403  # used
            for path in ("/", "/runs", f"/runs/{run_id}", "/projects/demo", "/projects/demo/endpoint"):
                audit.goto(f"{origin}{path}")
                audit.locator("main table, main textarea").locator("visible=true").first.wait_for()
                audit.add_script_tag(path=str(AXE))
                assert audit.evaluate(SERIOUS) == [], path
        finally:
            browser.close()
