"""The whole local cloud as a user runs it: tuneloop up, the API, a drop, down and up again."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from chalicelib.domain import names
from chalicelib.domain.project import normalise_config
from tests.conftest import DEMO_TUNED_CONFIG, load_event
from tests.e2e.conftest import REPO, client, cloudwatch, http, invoke, s3, tuneloop, wait_for
from tests.e2e.dashboard import check_dashboard

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_local_cloud_end_to_end(cloud: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    home, state = cloud
    assert "running" in tuneloop(home, "status").stdout
    # Every service checks the credentials `up` made (mode 600); `env` hands them to a shell.
    saved = json.loads((home / "credentials.json").read_text())
    assert (home / "credentials.json").stat().st_mode & 0o077 == 0
    exports = tuneloop(home, "env").stdout
    assert f"export AWS_ACCESS_KEY_ID={saved['aws_access_key_id']}" in exports
    assert f"AWS_ENDPOINT_URL_SAGEMAKER=http://127.0.0.1:{state['sagemaker_port']}" in exports
    for port in (state["moto_port"], state["dynamodb_port"], state["sagemaker_port"]):
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"{}"), timeout=10)
        assert unsigned.value.code == 403

    # The API binds loopback and wants the bearer token it generated.
    assert http(state, "GET", "/projects", token=None)[0] == 401
    assert http(state, "GET", "/projects", token="wrong")[0] == 401
    assert http(state, "GET", "/no/such/route")[0] == 404
    assert http(state, "POST", "/runs/aaaaaaaaaaaa/approve", {}, token=None)[0] == 401
    assert http(state, "POST", "/runs/aaaaaaaaaaaa/reject", {}, token="wrong")[0] == 401
    spec = tmp_path / "project.json"
    # The demo project's tuning, cut to two trials to keep the suite quick.
    config = {**DEMO_TUNED_CONFIG, "tuning": {**DEMO_TUNED_CONFIG["tuning"], "max_jobs": 2}}
    spec.write_text(json.dumps({"name": "demo", "config": config}))
    tuneloop(home, "project", "create", "--file", str(spec))
    # `drop` checks what the intake would: when no run will start it uploads nothing, says
    # why, and exits non-zero.
    reviews = str(REPO / "examples/data/reviews.jsonl")
    refused = tuneloop(home, "drop", reviews, "--project", "nope", check=False)
    assert refused.returncode != 0 and "there is no project 'nope'" in refused.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("not a dataset\n")
    refused = tuneloop(home, "drop", str(notes), "--project", "demo", check=False)
    assert refused.returncode != 0 and "neither manifest.json nor a .jsonl/.csv file" in refused.stderr
    assert not s3(state).list_objects_v2(Bucket=state["bucket"], Prefix="datasets/").get("KeyCount")

    # Any S3 client's upload becomes an Object Created event that starts a run, which
    # prepares the data and tunes fine-tunes of the packaged MiniLM on the local SageMaker.
    s3(state).put_object(
        Bucket=state["bucket"],
        Key="datasets/demo/ds 1/reviews.jsonl",
        Body=(REPO / "examples/data/reviews.jsonl").read_bytes(),
    )
    runs = wait_for(lambda: http(state, "GET", "/runs?project=demo")[1]["runs"])
    run_id = runs[0]["run_id"]
    active = ("preparing", "tuning", "evaluating", "gating", "registering", "deploying")
    run = wait_for(lambda: (r := http(state, "GET", f"/runs/{run_id}")[1])["state"] not in active and r, 480)
    assert run["state"] == "deployed", run["history"][-1]["reason"]
    assert run["dataset_uri"] == f"s3://{state['bucket']}/datasets/demo/ds 1/reviews.jsonl"
    assert [h["to"] for h in run["history"]] == [
        "preparing",
        "tuning",
        "evaluating",
        "gating",
        "registering",
        "deploying",
        "deployed",
    ]
    assert run["package_arn"].endswith("model-package/tl-local-demo/1")  # auto-approved into the registry
    trials = run["tuning"]["trials"]
    assert len(trials) == 2 and {t["status"] for t in trials} <= {"Completed", "Stopped"}
    assert trials[0]["chosen"] and trials[0]["training_job"] == run["model_source"]
    assert run["model_source"] == run["tuning"]["best_training_job"]
    assert all(set(t["hyperparameters"]) == {"learning-rate", "warmup-ratio"} for t in trials)
    assert run["metrics"]["training"]["validation_macro_f1"] == trials[0]["objective"] > 0.5
    assert run["metrics"]["evaluation"]["macro_f1"] >= 0.7  # the demo project's gate
    report = run["links"]["evaluation_report"].removeprefix(f"s3://{state['bucket']}/")
    assert (
        b"<h1>Evaluation on the test split</h1>"
        in s3(state).get_object(Bucket=state["bucket"], Key=report)["Body"].read()
    )
    artifact = run["links"]["model_artifact"].removeprefix(f"s3://{state['bucket']}/")
    assert s3(state).head_object(Bucket=state["bucket"], Key=artifact)["ContentLength"] > 1_000_000
    # The evaluate job's time limit followed the test split's size, read from the profile
    # (the most allowed, 86400 s, would mean it could not be read).
    evaluate = client(state, "sagemaker").describe_processing_job(
        ProcessingJobName=names.job_name(run_id, "evaluate", stage="local")
    )
    assert evaluate["StoppingCondition"]["MaxRuntimeInSeconds"] == 1800  # a few dozen rows: the floor
    assert evaluate["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.large"
    shown = json.loads(tuneloop(home, "run", "show", run_id, "--json").stdout)
    assert shown["state"] == "deployed"
    check_report(home, run, tmp_path)
    # The model serves on the project's endpoint, through SageMaker Runtime, and its
    # traffic is captured for the drift checks, under the run whose model answered.
    assert invoke(state, "a superb, sturdy kettle that works")["label"] in ("positive", "negative")
    capture = f"capture/demo/{run_id}/tl-local-demo/AllTraffic/"
    wait_for(lambda: s3(state).list_objects_v2(Bucket=state["bucket"], Prefix=capture).get("KeyCount"), 30)
    run = wait_for(lambda: not (r := http(state, "GET", f"/runs/{run_id}")[1])["pending_commands"] and r)
    alarms = cloudwatch(state).describe_alarms(AlarmNamePrefix=f"tl-local-{run_id}-drift-")["MetricAlarms"]
    assert {a["MetricName"] for a in alarms} == set(normalise_config(config)["drift"]["thresholds"])

    # Feedback through the S3 door, as a user drops it: the upload reaches the intake by the
    # same rule as datasets; valid rows are stored, the bad one refused with its line.
    answer = client(state, "sagemaker-runtime").invoke_endpoint(
        EndpointName="tl-local-demo", ContentType="application/json", Body=json.dumps("a kettle that works"),
        InferenceId="order-17",
    )  # fmt: skip
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-sagemaker-inference-id"] == "order-17"
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"inference_id": "order-17", "label": "positive"}\n{"inference_id": "order-18"}\n')
    sent = tuneloop(home, "feedback", "send", str(labels), "--project", "demo")
    assert "stored 1 row(s)" in sent.stdout and "refused 1: line 2: label: missing" in sent.stdout, sent.stdout
    assert "stored 1 row(s)" in tuneloop(home, "feedback", "list", "--project", "demo").stdout
    assert len([o for o in s3(state).list_objects_v2(Bucket=state["bucket"], Prefix="labels/demo/")["Contents"]
                if o["Key"].endswith(".jsonl")]) == 1  # fmt: skip
    assert len(http(state, "GET", "/runs?project=demo")[1]["runs"]) == 1  # feedback starts no run
    check_stage_commands(home, state, run_id, tmp_path)

    # A replayed SageMaker event, delivered through the router as EventBridge would: the
    # prepare job finished long ago, so the run ignores it as stale.
    event = load_event("processing_job_completed")
    event["detail"]["ProcessingJobName"] = names.job_name(run_id, "prepare", stage="local")
    event["detail"]["Tags"] = {}
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    assert "on_sagemaker_event" in tuneloop(home, "event", "send", str(path)).stdout
    assert "deployed" in tuneloop(home, "runs", "--project", "demo").stdout
    assert len(http(state, "GET", f"/runs/{run_id}")[1]["history"]) == 7
    assert "← chosen" in tuneloop(home, "run", "show", run_id).stdout

    # State survives down/up: tables on disk, the bucket saved and restored.
    tuneloop(home, "down")
    assert "down" in tuneloop(home, "status", check=False).stdout
    tuneloop(home, "up")
    state = json.loads((home / "state.json").read_text())
    assert http(state, "GET", f"/runs/{run_id}")[1]["state"] == "deployed"
    assert invoke(state, "still serving after a restart")["label"] in ("positive", "negative")
    keys = [o["Key"] for o in s3(state).list_objects_v2(Bucket=state["bucket"]).get("Contents", [])]
    assert "datasets/demo/ds 1/reviews.jsonl" in keys and f"{artifact}" in keys
    # The restore itself started no new run.
    assert len(http(state, "GET", "/runs?project=demo")[1]["runs"]) == 1

    # The dashboard, in a real browser, over this run (its screenshots go to TUNELOOP_ARTIFACTS).
    artifacts = Path(os.environ.get("TUNELOOP_ARTIFACTS") or tmp_path) / "dashboard"
    check_dashboard(home, state, http(state, "GET", f"/runs/{run_id}")[1], artifacts)

    check_project_delete(home, state, run_id)

    # `up --clean` starts from nothing: no runs, and no SageMaker jobs, packages or endpoints
    # that would make a new run's deterministic job names look already done.
    tuneloop(home, "down")
    tuneloop(home, "up", "--clean")
    state = json.loads((home / "state.json").read_text())
    assert http(state, "GET", "/runs")[1]["runs"] == []
    assert not (home / "sagemaker" / "processing").exists() and not (home / "sagemaker" / "hosting").exists()


def check_stage_commands(home: Path, state: dict[str, Any], run_id: str, tmp_path: Path) -> None:
    """The CLI's remote path, with the local cloud as the stage: every API call signed with
    SigV4 (IAM auth), uploads through the stage's bucket; the same output and exit codes."""
    assert "stage local (us-east-1): reachable" in tuneloop(home, "status", "--stage", "local").stdout
    assert "deployed" in tuneloop(home, "runs", "--stage", "local", "--project", "demo").stdout
    assert json.loads(tuneloop(home, "run", "show", run_id, "--stage", "local", "--json").stdout)["state"] == "deployed"
    watched = tuneloop(home, "watch", run_id, "--stage", "local")
    assert "deployed" in watched.stdout and "tuneloop run retrain" in watched.stdout
    labels = tmp_path / "stage-labels.csv"
    labels.write_text("inference_id,label\norder-17,negative\n")
    sent = tuneloop(home, "feedback", "send", str(labels), "--project", "demo", "--stage", "local")
    assert "stored 1 row(s)" in sent.stdout, sent.stdout
    reviews = str(REPO / "examples/data/reviews.jsonl")
    refused = tuneloop(home, "drop", reviews, "--project", "ghost", "--stage", "local", check=False)
    assert refused.returncode == 1 and "there is no project 'ghost'" in refused.stderr
    # An upload the CLI did not check (aws s3 cp) starts nothing, and says so where its
    # uploader can look.
    s3(state).put_object(Bucket=state["bucket"], Key="datasets/ghost/d1/reviews.jsonl", Body=b'{"text": "a"}\n')
    wait_for(lambda: http(state, "GET", "/drops")[1]["refused"], 60, "the refused drop recorded")
    shown = tuneloop(home, "drops", "--stage", "local").stdout
    assert "s3://" + state["bucket"] + "/datasets/ghost/d1/reviews.jsonl: no project named 'ghost'" in shown
    assert tuneloop(home, "drops", "--json").stdout == tuneloop(home, "drops", "--stage", "local", "--json").stdout


def inventory(state: dict[str, Any], prefix: str) -> dict[str, list[str]]:
    """What bills or acts under a name prefix: endpoints, configs, models, alarms, scaling."""
    sagemaker, targets = client(state, "sagemaker"), client(state, "application-autoscaling")
    found = {
        "endpoints": [e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]],
        "alarms": [a["AlarmName"] for a in cloudwatch(state).describe_alarms()["MetricAlarms"]],
        "scaling": [t["ResourceId"] for t in targets.describe_scalable_targets(ServiceNamespace="sagemaker")[
            "ScalableTargets"]],
    }  # fmt: skip
    return {kind: [name for name in names_ if prefix in name] for kind, names_ in found.items()}


def check_project_delete(home: Path, state: dict[str, Any], run_id: str) -> None:
    """`project delete` through the stage's API: serving stops and nothing named for the
    project is left; the registered version is kept, and so is the run, as history."""
    before = inventory(state, "tl-local-")
    assert before["endpoints"] == ["tl-local-demo"], before
    refused = tuneloop(home, "project", "delete", "demo", "--stage", "local", check=False)
    assert refused.returncode == 1 and "pass --yes to confirm" in refused.stderr
    deleted = json.loads(tuneloop(home, "project", "delete", "demo", "--stage", "local", "--yes", "--json").stdout)
    assert deleted["deleted"]["endpoints"] == ["tl-local-demo"]
    assert f"tl-local-{run_id}-config-1" in deleted["deleted"]["endpoint_configs"]
    assert f"tl-local-{run_id}-model-1" in deleted["deleted"]["models"]
    assert sorted(deleted["deleted"].get("alarms", [])) == sorted(before["alarms"])
    assert run_id in deleted["kept"]["runs"] and len(deleted["kept"]["model_packages"]) == 1
    assert inventory(state, "tl-local-") == {"endpoints": [], "alarms": [], "scaling": []}
    sagemaker = client(state, "sagemaker")
    for call, key in (
        (sagemaker.describe_endpoint_config, "EndpointConfigName"),
        (sagemaker.describe_model, "ModelName"),
    ):
        with pytest.raises(sagemaker.exceptions.ClientError, match="Could not find"):
            call(**{key: f"tl-local-{run_id}-{'config' if 'Config' in key else 'model'}-1"})
    assert http(state, "GET", "/projects/demo")[0] == 404
    assert http(state, "GET", f"/runs/{run_id}")[1]["state"] == "stopped"


CHROMIUM = Path("/usr/bin/chromium")


def check_report(home: Path, run: dict[str, Any], tmp_path: Path) -> None:
    """The report's links work without credentials, `tuneloop report` saves it, and the
    page renders in headless Chromium with the run's metrics and every plot decoded."""
    from io import BytesIO

    from PIL import Image

    links = run["links"]
    with urllib.request.urlopen(links["report"], timeout=30) as response:  # presigned: no credentials
        assert b"<h1>Evaluation on the test split</h1>" in response.read()
    for plot in ("plot:confusion_matrix", "plot:training_curves"):
        with urllib.request.urlopen(links[plot], timeout=30) as response, Image.open(BytesIO(response.read())) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    saved = tmp_path / "report.html"
    assert str(saved) in tuneloop(home, "report", run["run_id"], "--out", str(saved)).stdout
    if not CHROMIUM.exists():
        if os.environ.get("TUNELOOP_REQUIRE_BROWSER"):
            raise AssertionError(f"{CHROMIUM} is missing; .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"the report's rendering check needs {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page()
            page.goto(saved.as_uri())
            shown, intervals = {}, {}
            for row in page.locator("#metrics tr").all():  # metric, value, its interval
                cells = row.locator("td").all_inner_texts()
                if cells:
                    name = row.locator("th").inner_text()
                    shown[name], intervals[name] = cells[0], cells[1]
            images = page.evaluate(
                "[...document.images].map(i => ({alt: i.alt, ok: i.complete, width: i.naturalWidth}))"
            )
        finally:
            browser.close()
    evaluation = run["metrics"]["evaluation"]
    assert shown["macro_f1"] == f"{evaluation['macro_f1']:.4f}" and shown["accuracy"] == f"{evaluation['accuracy']:.4f}"
    assert " to " in intervals["macro_f1"] and " to " in intervals["accuracy"]  # bootstrap intervals
    assert {i["alt"] for i in images} >= {"confusion_matrix.png", "training_curves.png"}
    assert all(i["ok"] and i["width"] > 300 for i in images), images


def test_make_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    """What `make demo` runs: drop → tune → deploy → traffic → drift → alarm → retraining run
    → gated against the champion → deployed blue/green (or rejected, with the reason).

    And the loop learns from production: a model trained on product reviews serves changed
    traffic (service reviews that turn its cues around), labels for it come back through
    the feedback API, production macro-F1 is measured below the project's floor and its
    alarm fires, and the retraining run, which learned from the labelled production traffic,
    does better on the held-out part of it than the first model."""
    result = tuneloop(tmp_path / "home", "demo", timeout=900)
    out = result.stdout
    assert re.search(r"watch it in the dashboard while it runs: http://127\.0\.0\.1:\d+/\?session=", out)
    assert "drift check: no drift" in out, out[-3000:]
    assert "drift check: DRIFT in" in out
    assert re.search(r"(drift|quality) alarm → retraining run", out), out[-3000:]
    assert "production quality: BELOW FLOOR in production_macro_f1" in out, out[-3000:]
    assert "-quality-production-macro-f1" in out  # its alarm fired: it started the run, or was recorded
    learned = re.search(r"learned from (\d+) labelled production examples", out)
    assert learned and int(learned[1]) >= 150, out[-3000:]
    measured = re.search(r"held-out production traffic \((\d+) requests\): macro-F1 first model ([\d.]+) → "
                         r"retrained ([\d.]+)", out)  # fmt: skip
    assert measured, out[-3000:]
    requests, before, after = int(measured[1]), float(measured[2]), float(measured[3])
    print(f"held-out production macro-F1 on {requests} requests: first model {before:.3f}, retrained {after:.3f}")
    # About 20 held-out requests: a margin of 0.25 is several times the sampling noise of a
    # macro-F1 at that size, and the first model reads the changed wording backwards.
    assert requests >= 10 and after >= before + 0.25, (before, after)
    child = re.search(r"retraining run (\w{12}) is (DEPLOYED|REJECTED): (.*)", out)
    assert child, out[-3000:]
    assert "vs champion" in child[3] or "does not beat champion" in child[3]  # gated against the deployed model
    if child[2] == "DEPLOYED":
        assert f"tl-local-demo serves tl-local-{child[1]}-config-1" in out and "is superseded" in out
        # The new model's alarms watch its own series: none is in ALARM on its predecessor's numbers.
        alarms = re.search(r"its own monitoring alarms: (.*)", out)
        assert alarms and "prediction_psi" in alarms[1] and " ALARM" not in alarms[1], out[-3000:]
    # The first model had no champion: it had to beat the majority class of its training split.
    assert "vs the majority-class predictor" in out and "better beyond noise" in out
    assert re.search(r"demo finished in \d+\.\ds", out)
    # Under the template's policies, enforced: every function and job call allowed.
    assert "IAM enforced: 6 functions' roles and the SageMaker execution role" in out
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "home").rglob("logs/*.log"))
    assert "IAM: role/sagemaker-execution's calls are decided" in logs
    assert "AccessDenied" not in logs, [line for line in logs.splitlines() if "AccessDenied" in line][:10]
